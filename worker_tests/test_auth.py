"""SCRAM-SHA-256 style authentication primitives."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import auth
from worker_tests.strategies import examples

SALT = b"0123456789abcdef"
MESSAGE = auth.auth_message(1, "w1", "c" * 32, "c" * 32 + "s" * 32, "c2FsdA==", 4096)


def reference_scram(password: str, salt: bytes, iterations: int, message: bytes):
    """RFC 5802 section 3, written out independently of auth.py."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    client_signature = hmac.new(stored_key, message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, message, hashlib.sha256).digest()
    return stored_key, server_key, proof, server_signature


def test_rfc7677_test_vector():
    """The primitives reproduce RFC 7677's SCRAM-SHA-256 example exactly."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    message = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
               b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
               b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
               b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    proof, server_signature = auth.client_proof("pencil", salt, 4096, message)
    assert base64.b64encode(proof) == b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    credentials = auth.ScramCredentials.from_password("pencil", 4096, salt)
    assert credentials.verify_proof(message, proof)
    assert credentials.server_signature(message) == server_signature


@settings(max_examples=examples(50))
@given(password=st.text(max_size=20), salt=st.binary(max_size=24),
       iterations=st.integers(1, 8), message=st.binary(max_size=64))
def test_matches_reference_and_verifies(password, salt, iterations, message):
    stored_key, server_key, proof, server_signature = reference_scram(
        password, salt, iterations, message)
    credentials = auth.ScramCredentials.from_password(password, iterations, salt)
    assert (credentials.salt, credentials.iterations) == (salt, iterations)
    assert (credentials.stored_key, credentials.server_key) == (stored_key, server_key)
    assert auth.client_proof(password, salt, iterations, message) == (proof, server_signature)
    assert credentials.verify_proof(message, proof)
    assert credentials.server_signature(message) == server_signature
    assert auth.signatures_match(server_signature, credentials.server_signature(message))


@settings(max_examples=examples(50))
@given(password=st.text(max_size=12), other=st.text(max_size=12), iterations=st.integers(1, 4))
def test_wrong_password_fails_both_ways(password, other, iterations):
    # HMAC zero-pads its key, so PBKDF2 (and SCRAM) cannot tell "pw" from "pw\0".
    if password.rstrip("\0") == other.rstrip("\0"):
        return
    credentials = auth.ScramCredentials.from_password(password, iterations, SALT)
    proof, expected_signature = auth.client_proof(other, SALT, iterations, MESSAGE)
    assert not credentials.verify_proof(MESSAGE, proof)
    # ... and a master with the wrong password cannot produce the worker's expected signature.
    assert not auth.signatures_match(expected_signature, credentials.server_signature(MESSAGE))


def test_proof_is_bound_to_the_transcript():
    credentials = auth.ScramCredentials.from_password("secret", 16, SALT)
    proof, _ = auth.client_proof("secret", SALT, 16, MESSAGE)
    assert credentials.verify_proof(MESSAGE, proof)
    other = auth.auth_message(1, "w1", "c" * 32, "c" * 32 + "t" * 32, "c2FsdA==", 4096)
    assert not credentials.verify_proof(other, proof)


def test_trailing_nul_is_a_known_hmac_equivalence():
    """Documented limitation (RFC 2104 key padding), not a protocol bug."""
    credentials = auth.ScramCredentials.from_password("pw", 1, SALT)
    proof, _ = auth.client_proof("pw\0", SALT, 1, MESSAGE)
    assert credentials.verify_proof(MESSAGE, proof)


@pytest.mark.parametrize("proof", [b"", b"x" * 31, b"x" * 33, b"\0" * 32])
def test_malformed_proofs_are_rejected(proof):
    credentials = auth.ScramCredentials.from_password("secret", 16, SALT)
    assert not credentials.verify_proof(MESSAGE, proof)


def test_random_salt_and_nonces():
    a = auth.ScramCredentials.from_password("secret", 16)
    b = auth.ScramCredentials.from_password("secret", 16)
    assert len(a.salt) == auth.SALT_BYTES and a.salt != b.salt
    assert a.stored_key != b.stored_key
    assert base64.b64decode(a.salt_b64) == a.salt
    nonces = {auth.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    for nonce in nonces:
        assert len(base64.b64decode(nonce, validate=True)) == auth.NONCE_BYTES
        assert len(nonce) == 32


def test_auth_message_format():
    assert auth.auth_message(1, "w\u00e9", "a", "ab", "c2FsdA==", 4096) == (
        b'["msgproto-scram",1,"w\\u00e9","a","ab","c2FsdA==",4096]')


transcripts = st.tuples(st.integers(1, 5), st.text(max_size=8), st.text(max_size=8),
                        st.text(max_size=8), st.text(max_size=8), st.integers(1, 10**6))


@settings(max_examples=examples(200))
@given(transcripts, transcripts)
def test_auth_message_is_unambiguous(a, b):
    """Different transcripts never produce the same bytes (no concatenation ambiguity)."""
    ma, mb = auth.auth_message(*a), auth.auth_message(*b)
    assert (ma == mb) == (a == b)
    ma.decode("ascii")
    assert json.loads(ma) == ["msgproto-scram", *a]


def test_signatures_match_is_hmac_compare_digest():
    assert auth.signatures_match(b"abc", b"abc")
    assert not auth.signatures_match(b"abc", b"abd")
    assert not auth.signatures_match(b"abc", b"ab")


def test_documented_example():
    """The handshake example of docs/protocol.rst, section 6.5."""
    c = base64.b64encode(b"\1" * 24).decode()
    nonce = c + base64.b64encode(b"\2" * 24).decode()
    salt = b"\0" * 16
    message = auth.auth_message(1, "w1", c, nonce, base64.b64encode(salt).decode(), 4096)
    proof, signature = auth.client_proof("pass", salt, 4096, message)
    assert base64.b64encode(proof) == b"0Va3kIZxQaj1Y/NKzG4+Qa+tB1iwSihIAYhBcfeQ7B4="
    assert base64.b64encode(signature) == b"XD0sfuiwGQYVSmvsdqqbkWp3PDRBetcQ85Z+lt+vrrw="
    credentials = auth.ScramCredentials.from_password("pass", 4096, salt)
    assert credentials.verify_proof(message, proof)


def documented_exchange(monkeypatch) -> list[str]:
    """The example exchange of docs/protocol.rst 6.6, produced by two real sessions."""
    import itertools

    from buildbot_worker_msgproto.protocol.session import Role
    from buildbot_worker_msgproto.protocol.session import Session

    fills = itertools.count(1)
    monkeypatch.setattr(auth, "new_nonce", lambda: base64.b64encode(
        bytes([next(fills)]) * auth.NONCE_BYTES).decode())
    worker = Session(Role.WORKER, worker_name="w1", password="pass")
    master = Session(Role.MASTER)
    lines: list[str] = []

    def deliver(sender: Session, receiver: Session, prefix: str) -> list:
        events = []
        for frame in sender.frames_to_send():
            lines.append(f"{prefix} {frame.decode('ascii')}")
            events += receiver.receive_frame(frame, 0.0)
        return events

    worker.start(0.0)
    deliver(worker, master, "W->M")
    master.answer_hello(auth.ScramCredentials.from_password("pass", 4096, b"\0" * 16), 0.0)
    deliver(master, worker, "M->W")
    deliver(worker, master, "W->M")
    deliver(master, worker, "M->W")
    request = master.send_request("print", {"message": "hello"}, 0.0)
    deliver(master, worker, "M->W")
    worker.send_response(request, None, 0.0)
    worker.send_notification("update", {"command_id": "c1", "updates": [["stdout", "hi\n"]]},
                             0.0)
    worker.close("shutdown", "worker stopping", 0.0)
    deliver(worker, master, "W->M")
    return lines


def test_documented_exchange_is_what_the_sessions_send(monkeypatch):
    import pathlib

    rst = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.rst"
    documented = [line.strip() for line in rst.read_text(encoding="utf-8").splitlines()
                  if line.strip().startswith(("W->M {", "M->W {"))]
    assert documented == documented_exchange(monkeypatch)
