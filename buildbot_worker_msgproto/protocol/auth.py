"""SCRAM-SHA-256 style mutual challenge-response (after RFC 5802 / RFC 7677).

No password crosses the wire: the worker proves knowledge of the password with
``ClientProof`` and the master proves it with ``ServerSignature``, both bound to
nonces from both sides, so a recorded exchange cannot be replayed and an impostor
master that does not know the password is detected by the worker.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os

NONCE_BYTES = 24
SALT_BYTES = 16

#: Authentication mechanisms a worker may offer in ``hello.auth``.
#: ``scram-sha-256``: the password proof of this module (the default when ``auth`` is absent).
#: ``tls-client-cert``: the worker's verified TLS client certificate names it and no
#: password is used; the worker authenticates the master by its TLS certificate
#: (docs/security/mtls.rst).  The session only carries the choice; checking the
#: certificate is the transport's and the master's job.
SCRAM = "scram-sha-256"
CLIENT_CERTIFICATE = "tls-client-cert"
MECHANISMS = (SCRAM, CLIENT_CERTIFICATE)

#: Per-process secret from which the decoy salts of unknown workers are derived.
_DECOY_KEY = os.urandom(32)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def new_nonce() -> str:
    """A fresh random nonce, base64 text."""
    return base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii")


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA256 of the password (the expensive, cacheable step)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def auth_message(version: int, worker: str, client_nonce: str, nonce: str, salt: str,
                 iterations: int) -> bytes:
    """The transcript both proofs are computed over (canonical JSON, unambiguous)."""
    return json.dumps(["msgproto-scram", version, worker, client_nonce, nonce, salt, iterations],
                      separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclasses.dataclass(frozen=True)
class ScramCredentials:
    """What the master keeps to verify a worker: never the password itself on the wire."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str, iterations: int,
                      salt: bytes | None = None) -> ScramCredentials:
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        salted = salted_password(password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(),
                   _hmac(salted, b"Server Key"))

    @property
    def salt_b64(self) -> str:
        return base64.b64encode(self.salt).decode("ascii")

    def verify_proof(self, message: bytes, proof: bytes) -> bool:
        """True if ``proof`` is the ClientProof for ``message`` (constant-time)."""
        if len(proof) != len(self.stored_key):
            return False
        client_signature = _hmac(self.stored_key, message)
        client_key = _xor(proof, client_signature)
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)

    def server_signature(self, message: bytes) -> bytes:
        return _hmac(self.server_key, message)


def decoy_credentials(worker: str, iterations: int) -> ScramCredentials:
    """Credentials to challenge an unknown worker with, indistinguishable from real ones.

    A registered worker's credentials are cached by the master, so its salt is the same
    on every connection; a decoy's salt is therefore derived from the name (and a
    per-process secret) rather than random, and no PBKDF2 runs, so that neither the
    salt nor the response time tells an attacker whether a worker name exists.  No
    proof ever verifies against a decoy: its keys are random.
    """
    salt = _hmac(_DECOY_KEY, b"decoy salt\0" + worker.encode("utf-8", "surrogatepass"))
    return ScramCredentials(salt[:SALT_BYTES], iterations, os.urandom(32), os.urandom(32))


def client_proof(password: str, salt: bytes, iterations: int,
                 message: bytes) -> tuple[bytes, bytes]:
    """Worker side: return (ClientProof, expected ServerSignature) for ``message``."""
    proof, expected_server_signature, _ = scram_client(password, salt, iterations, message)
    return proof, expected_server_signature


def signatures_match(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(expected, received)


# ---------------------------------------------------------------------- session resume
#: Length of a resume key and of a resume proof (HMAC-SHA-256).
RESUME_KEY_BYTES = 32


def scram_client(password: str, salt: bytes, iterations: int,
                 message: bytes) -> tuple[bytes, bytes, bytes]:
    """Worker side: (ClientProof, expected ServerSignature, StoredKey) for ``message``."""
    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    proof = _xor(client_key, _hmac(stored_key, message))
    return proof, _hmac(_hmac(salted, b"Server Key"), message), stored_key


def scram_resume_key(stored_key: bytes, message: bytes) -> bytes:
    """The secret a password login's session is resumed with: derived on both sides from
    the SCRAM StoredKey and that login's transcript, so it never crosses the wire."""
    return _hmac(stored_key, b"msgproto resume key\0" + message)


def new_resume_key() -> bytes:
    """A random resume secret (certificate login: sent in ``welcome``, inside TLS)."""
    return os.urandom(RESUME_KEY_BYTES)


def resume_proof(key: bytes, session_id: str, transcript: bytes) -> bytes:
    """Proof that the sender holds the session's resume key, bound to the new link's
    handshake ``transcript`` (both nonces), so that it cannot be replayed."""
    return _hmac(key, b"msgproto resume\0" + session_id.encode("utf-8") + b"\0" + transcript)


def resume_transcript(worker: str, client_nonce: str) -> bytes:
    """The transcript of a certificate login's resume (the TLS handshake with the client
    certificate is what makes it fresh; the client nonce binds the proof to this hello)."""
    return json.dumps(["msgproto-resume-cert", worker, client_nonce],
                      separators=(",", ":"), ensure_ascii=True).encode("ascii")
