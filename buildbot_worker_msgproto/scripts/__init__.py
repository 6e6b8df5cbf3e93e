"""Command-line tools of buildbot-msgproto."""
