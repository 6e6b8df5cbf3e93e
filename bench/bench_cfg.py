"""master.cfg snippets for the benchmark (python *source text* handed to make_master_cfg).

Everything timed is timed inside the master process, with ``time.monotonic()``, and stored
as float build properties; Buildbot's own step/build timestamps are whole seconds.

* ``BenchMark(prop)``: a master-side step setting ``prop`` to the current monotonic time.
* ``bench_timed(StepClass)``: a subclass whose ``run()`` is timed; the duration (seconds,
  float) lands in the build property given by ``bench_prop=``.
* ``BenchConnectRecorder``: a service appending ``<time.time()> connected <worker>`` to a file
  for every ``workers.*.connected`` event of the master's message queue, so the time at
  which the last of N workers attached is known to the microsecond rather than to the REST
  poll interval.
"""

from __future__ import annotations

# Python source shared by all benchmark masters: helper classes only, no builders.
HELPERS_PY = '''
import time as _bench_time

from buildbot.process import buildstep as _bench_buildstep
from buildbot.process.results import SUCCESS as _BENCH_SUCCESS
from buildbot.util import service as _bench_service
from twisted.internet import defer as _bench_defer


class BenchMark(_bench_buildstep.BuildStep):
    """Master-side step: set build property ``prop`` to time.monotonic() (a float)."""

    def __init__(self, prop, **kwargs):
        kwargs.setdefault('name', prop)
        super().__init__(**kwargs)
        self.bench_mark_prop = prop

    def run(self):
        self.setProperty(self.bench_mark_prop, _bench_time.monotonic(), 'bench')
        return _bench_defer.succeed(_BENCH_SUCCESS)


_BENCH_TIMED = {}


def bench_timed(cls):
    """Subclass of step class ``cls`` whose run() duration goes to property ``bench_prop``."""
    if cls in _BENCH_TIMED:
        return _BENCH_TIMED[cls]

    class Timed(cls):
        def __init__(self, *args, bench_prop, **kwargs):
            super().__init__(*args, **kwargs)
            self.bench_prop = bench_prop

        @_bench_defer.inlineCallbacks
        def run(self):
            t0 = _bench_time.monotonic()
            try:
                res = yield super().run()
            finally:
                self.setProperty(self.bench_prop, _bench_time.monotonic() - t0, 'bench')
            return res

    Timed.__name__ = 'BenchTimed' + cls.__name__
    _BENCH_TIMED[cls] = Timed
    return Timed


class BenchConnectRecorder(_bench_service.BuildbotService):
    """Append '<time.time()> <event> <worker name>' for every worker (dis)connection."""

    name = 'bench_connect_recorder'

    def checkConfig(self, path, **kwargs):
        pass

    def reconfigService(self, path, **kwargs):
        self.bench_path = path

    @_bench_defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        self._bench_file = open(self.bench_path, 'a', buffering=1, encoding='utf-8')
        self._bench_consumers = []
        for event in ('connected', 'disconnected'):
            consumer = yield self.master.mq.startConsuming(
                self._bench_event, ('workers', None, event))
            self._bench_consumers.append(consumer)

    def _bench_event(self, key, msg):
        self._bench_file.write('%.6f %s %s\\n' % (_bench_time.time(), key[-1], msg['name']))

    @_bench_defer.inlineCallbacks
    def stopService(self):
        for consumer in self._bench_consumers:
            consumer.stopConsuming()
        self._bench_file.close()
        yield super().stopService()
'''

# Lines of the big-output step: 9 digits, a space, 89 'x' and a newline = 100 bytes each.
LOG_LINE_BYTES = 100


def log_lines_for(total_bytes: int) -> int:
    return max(1, total_bytes // LOG_LINE_BYTES)


def _big_output_program(lines: int) -> str:
    return (
        "import sys\n"
        "w = sys.stdout.write\n"
        "pad = 'x' * 89\n"
        f"for i in range({lines}):\n"
        "    w('%09d %s\\n' % (i, pad))\n"
        "sys.stdout.flush()\n"
    )


def builders_py(
    *,
    steps: int,
    file_bytes: int,
    upload_dest: str,
    download_src: str,
    warmup_src: str,
    warmup_dest: str,
    log_lines: int,
    python: str,
) -> str:
    """Builders 'warmup', 'steps', 'stat', 'upload', 'download' and 'bigout' for worker 'w1'."""
    prog = _big_output_program(log_lines)
    return (
        HELPERS_PY
        + f'''
_BENCH_STEPS = {int(steps)}


def _bench_builder(name, factory_steps):
    c['builders'].append(util.BuilderConfig(
        name=name, workernames=WORKER_NAMES, factory=util.BuildFactory(factory_steps)))


_bench_builder('warmup', [
    steps.ShellCommand(name='true', command=['true']),
    steps.ShellCommand(name='mkfile', command='head -c 100000 /dev/urandom > small.bin'),
    steps.FileUpload(name='up', workersrc='small.bin', masterdest={warmup_dest!r}),
    steps.FileDownload(name='down', mastersrc={warmup_src!r}, workerdest='small2.bin'),
    steps.ShellCommand(name='out', command=['seq', '1', '1000']),
])

# 1. per-step overhead: N trivial ShellCommands between two master-side time marks
_bench_builder('steps',
    [BenchMark('bench_t0')]
    + [steps.ShellCommand(name='s%04d' % i, command=['true']) for i in range(_BENCH_STEPS)]
    + [BenchMark('bench_t1')])

# 1b. the same with a remote command that spawns no process on the worker ('stat')
_bench_builder('stat',
    [steps.ShellCommand(name='touch', command=['touch', 'marker'])]
    + [BenchMark('bench_t0')]
    + [steps.FileExists(name='f%04d' % i, file='build/marker') for i in range(_BENCH_STEPS)]
    + [BenchMark('bench_t1')])

# 2a. worker -> master, 2b. master -> worker
''' + transfer_builders_py("upload", "download", file_bytes, upload_dest, download_src) + f'''
# 3. a big stdout log
_bench_builder('bigout', [
    bench_timed(steps.ShellCommand)(
        name='bigout', bench_prop='bench_dt', command=[{python!r}, '-c', {prog!r}]),
])
'''
    )


def transfer_builders_py(up: str, down: str, file_bytes: int, upload_dest: str,
                         download_src: str) -> str:
    """Builder ``up``: the worker makes a random file of ``file_bytes`` (its sha256 and size
    in property ``bench_src``) and uploads it to ``upload_dest``; builder ``down``
    downloads ``download_src`` (the worker's sha256 and size in ``bench_got``).  The
    transfer step's duration is in ``bench_dt``; needs HELPERS_PY and ``_bench_builder``."""
    return f'''
_bench_builder({up!r}, [
    steps.SetPropertyFromCommand(
        name='make-file', property='bench_src',
        command="head -c {int(file_bytes)} /dev/urandom > big.bin && "
                "echo $(sha256sum big.bin | cut -d' ' -f1) $(stat -c %s big.bin)"),
    bench_timed(steps.FileUpload)(
        name='upload', bench_prop='bench_dt', workersrc='big.bin', masterdest={upload_dest!r}),
    steps.ShellCommand(name='cleanup', command=['rm', '-f', 'big.bin']),
])

_bench_builder({down!r}, [
    steps.ShellCommand(name='clean', command=['rm', '-f', 'dl.bin']),
    bench_timed(steps.FileDownload)(
        name='download', bench_prop='bench_dt', mastersrc={download_src!r},
        workerdest='dl.bin'),
    steps.SetPropertyFromCommand(
        name='check', property='bench_got',
        command="echo $(sha256sum dl.bin | cut -d' ' -f1) $(stat -c %s dl.bin)"),
    steps.ShellCommand(name='cleanup', command=['rm', '-f', 'dl.bin']),
])
'''


def many_builders_py() -> str:
    """One builder using every worker (so attaching runs setBuilderList), no builds."""
    return (
        HELPERS_PY
        + """
c['builders'].append(util.BuilderConfig(
    name='idle', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(command=['true'])])))
"""
    )


def recorder_py(path: str) -> str:
    """Record worker connect/disconnect events, and the moment each worker's attach sequence
    (workerConnected, setBuilderList, builder 'attached' prints, ...) has completed: the
    worker is then usable for builds. The latter wraps AbstractWorker.attached (Buildbot's
    own method, which MsgWorker inherits) and only adds a timestamp."""
    return f"""
c.setdefault('services', []).append(BenchConnectRecorder(path={path!r}))

from buildbot.worker import base as _bench_worker_base

_bench_attach_log = open({path!r}, 'a', buffering=1, encoding='utf-8')
_bench_orig_attached = _bench_worker_base.AbstractWorker.attached


def _bench_attached(self, conn):
    d = _bench_orig_attached(self, conn)

    def done(result, event):
        _bench_attach_log.write('%.6f %s %s\\n' % (_bench_time.time(), event, self.name))
        return result

    d.addCallbacks(done, done, callbackArgs=('attached',), errbackArgs=('attach-failed',))
    return d


_bench_worker_base.AbstractWorker.attached = _bench_attached
"""


MSGPACK_MASTER_QUIET_PY = """
# msgpack_experimental_v7 logs every frame by default; the benchmark must not measure logging
from buildbot.worker.protocols.manager.msgpack import BuildbotWebSocketServerProtocol
BuildbotWebSocketServerProtocol.debug = False
"""

MSGPACK_WORKER_QUIET_PY = (
    "# msgpack_experimental_v7 logs every frame by default (added by bench/run_bench.py)\n"
    "import buildbot_worker.msgpack\n"
    "buildbot_worker.msgpack.BuildbotWebSocketClientProtocol.debug = False\n"
)
