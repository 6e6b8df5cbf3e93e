"""Demo: a real master and worker over the msg protocol, one real build, on sqlite.

Run through ``scripts/run-demo`` (which creates the venv first).  Everything lives in
``./demo/``; ``scripts/run-demo stop`` stops the master and worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "demo")
MASTER = os.path.join(DEMO, "master")
WORKER = os.path.join(DEMO, "worker")
BIN = os.path.dirname(os.path.abspath(sys.executable))
WWW_PORT = int(os.environ.get("DEMO_WWW_PORT", "8010"))
MSG_PORT = int(os.environ.get("DEMO_MSG_PORT", "9989"))
API = f"http://127.0.0.1:{WWW_PORT}/api/v2"
ENV = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")

MASTER_CFG = f"""\
# A minimal master using the msg protocol (see docs/configuration.rst).
from buildbot.plugins import schedulers, steps, util, worker

c = BuildmasterConfig = {{}}
c['workers'] = [worker.MsgWorker('demo-worker', 'demo-password')]
# msg protocol and legacy PB, negotiated on one port
c['protocols'] = {{'msg': {{'port': 'tcp:{MSG_PORT}:interface=127.0.0.1'}}}}

factory = util.BuildFactory([
    steps.ShellCommand(name='hello',
                       command=['sh', '-c', 'echo "hello from $(hostname)"; uname -a']),
    steps.StringDownload('made on the master\\n', workerdest='from-master.txt'),
    steps.ShellCommand(name='show download', command=['cat', 'from-master.txt']),
    steps.ShellCommand(name='make artifact', command=['sh', '-c', 'seq 1 100000 > artifact.txt']),
    steps.FileUpload(workersrc='artifact.txt', masterdest='artifact.txt'),
])
c['builders'] = [util.BuilderConfig(name='demo', workernames=['demo-worker'], factory=factory)]
c['schedulers'] = [schedulers.ForceScheduler(name='force', builderNames=['demo'])]
c['www'] = {{'port': 'tcp:{WWW_PORT}:interface=127.0.0.1', 'plugins': {{}}}}
c['buildbotURL'] = 'http://127.0.0.1:{WWW_PORT}/'
c['buildbotNetUsageData'] = None
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, env=ENV, stdout=subprocess.DEVNULL)


def api(path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(API + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait(what: str, predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"demo: timed out waiting for {what}; see {MASTER}/twistd.log and "
             f"{WORKER}/twistd.log")


def stop() -> None:
    for directory, tool in ((WORKER, "buildbot-worker"), (MASTER, "buildbot")):
        if os.path.exists(os.path.join(directory, "twistd.pid")):
            subprocess.run([os.path.join(BIN, tool), "stop", directory], env=ENV)


def main() -> None:
    if sys.argv[1:] == ["stop"]:
        stop()
        return
    stop()
    os.makedirs(DEMO, exist_ok=True)
    if not os.path.exists(os.path.join(MASTER, "buildbot.tac")):
        run(os.path.join(BIN, "buildbot"), "create-master", "-q", MASTER)
    with open(os.path.join(MASTER, "master.cfg"), "w", encoding="utf-8") as f:
        f.write(MASTER_CFG)
    if not os.path.exists(os.path.join(WORKER, "buildbot.tac")):
        run(os.path.join(BIN, "buildbot-worker-msgproto"), "create-worker", "-q",
            "--protocol", "msg", WORKER, f"127.0.0.1:{MSG_PORT}", "demo-worker", "demo-password")
    print("demo: starting the master (sqlite) and a worker speaking the msg protocol ...")
    run(os.path.join(BIN, "buildbot"), "start", MASTER)
    run(os.path.join(BIN, "buildbot-worker"), "start", WORKER)
    wait("the worker to attach",
         lambda: api("/workers/demo-worker")["workers"][0]["connected_to"])
    builder = api("/builders/demo")["builders"][0]["builderid"]
    result = api("/forceschedulers/force", {"jsonrpc": "2.0", "id": 1, "method": "force",
                                            "params": {"builderid": str(builder)}})
    request_id = result["result"][0]
    builds: list = []

    def finished() -> bool:
        builds[:] = api(f"/buildrequests/{request_id}/builds")["builds"]
        return bool(builds) and builds[0]["complete"]

    wait("the build to finish", finished, 120)
    build = builds[0]
    steps = api(f"/builds/{build['buildid']}/steps")["steps"]
    names = {0: "SUCCESS", 1: "WARNINGS", 2: "FAILURE", 4: "EXCEPTION"}
    print(f"demo: build {build['number']}: {names.get(build['results'], build['results'])}")
    for step in steps:
        print(f"  step {step['name']!r}: {names.get(step['results'], step['results'])} "
              f"({step['state_string']})")
    with open(os.path.join(WORKER, "twistd.log"), encoding="utf-8") as f:
        if "over msgproto" not in f.read():
            sys.exit("demo: the worker did not use the msg protocol")
    print("demo: the worker talked to the master over the msg protocol "
          f"(see {WORKER}/twistd.log)")
    print(f"demo: web UI at http://127.0.0.1:{WWW_PORT}/#/builders/{builder}")
    print("demo: stop it with: scripts/run-demo stop")
    if build["results"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
