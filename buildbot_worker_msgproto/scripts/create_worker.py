"""``create-worker``: buildbot-worker's command, writing a buildbot.tac for our Worker."""

from __future__ import annotations

from typing import Any

from buildbot_worker_msgproto import compat

STOCK_IMPORT = "from buildbot_worker.bot import Worker"
OUR_IMPORT = "from buildbot_worker_msgproto import Worker"
STOCK_CALL = "protocol=protocol, useTls=use_tls,"
OUR_CALL = ("protocol=protocol, transport=transport,\n"
            "           transport_options=transport_options, useTls=use_tls,\n"
            "           tls_ca_file=tls_ca_file, tls_fingerprint=tls_fingerprint,\n"
            "           tls_client_cert=tls_client_cert, tls_client_key=tls_client_key,\n"
            "           ssh_tunnel=ssh_tunnel, ssh_key=ssh_key, ssh_known_hosts=ssh_known_hosts,\n"
            "           masters=masters, master_order=master_order,")
#: create-worker options written to buildbot.tac as ``tls_...`` settings (None: unset).
TLS_OPTIONS = ("tls-ca-file", "tls-fingerprint", "tls-client-cert", "tls-client-key")
#: create-worker options written to buildbot.tac as ``ssh_...`` settings (None: unset).
SSH_OPTIONS = ("ssh-tunnel", "ssh-key", "ssh-known-hosts")


def make_tac(config: Any) -> str:
    """buildbot-worker's buildbot.tac, pointed at our Worker with ``transport=``."""
    tac = compat.stock_worker_tac(config)
    for old, new in ((STOCK_IMPORT, OUR_IMPORT), (STOCK_CALL, OUR_CALL)):
        if old not in tac:
            raise compat.CreateWorkerError(
                f"unexpected buildbot-worker tac template: cannot find {old!r}")
        tac = tac.replace(old, new, 1)
    settings = (f"transport = {config['transport']!r}\n"
                f"transport_options = {dict(config.get('transport-options') or {})!r}\n")
    settings += "".join(f"{name.replace('-', '_')} = {config.get(name)!r}\n"
                        for name in TLS_OPTIONS + SSH_OPTIONS)
    settings += (f"masters = {list(config.get('masters') or [])!r}\n"
                 f"master_order = {config.get('master-order') or 'preferred'!r}\n")
    return tac.replace("protocol = ", settings + "protocol = ", 1)


def createWorker(config: Any) -> int:  # noqa: N802 - buildbot-worker's name
    """Create the worker directory, exactly as buildbot-worker does, with our tac."""
    basedir = config["basedir"]
    quiet = config["quiet"]
    try:
        contents = make_tac(config)
        compat.write_worker_dir(basedir, contents, quiet)
    except compat.CreateWorkerError as exception:
        print(f"{exception}\nfailed to configure worker in {basedir}")
        return 1
    if not quiet:
        print(f"worker configured in {basedir} (protocol {config['protocol']}, "
              f"transport {config['transport']})")
    return 0
