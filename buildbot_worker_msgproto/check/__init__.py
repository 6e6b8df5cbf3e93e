"""``buildbot-worker-msgproto check-connection``: what a worker would do, up to and
including authentication, without ever being attached (docs/check-connection.rst).

- :mod:`.settings`: what to connect to and how, from a worker's ``buildbot.tac`` or from
  create-worker's options;
- :mod:`.probe`: one check against one master, reporting every step it got through;
- :mod:`.diagnosis`: the one-line diagnosis and exit code of a report.
"""
