"""The encrypted credential vault: broker (and notifier, audit sink) secrets at rest.

The vault is one file, ``$RICK_HOME/vault.json`` (mode 0600)::

    {
      "format": "rick-vault",
      "version": 1,
      "kdf": {"name": "raw"},                 # or {"name": "scrypt", "salt": ..., "n", "r", "p"}
      "key_check": "<base64: nonce + AES-GCM tag of a constant>",
      "nonce": "<base64: 12 random bytes, new at every write>",
      "data": "<base64: AES-256-GCM ciphertext of every entry>"
    }

Everything about the credentials (which components have which secrets, when
they were stored and rotated, and the values) is inside ``data``: one
AES-256-GCM blob, authenticated together with the header (``format``,
``version`` and ``kdf`` are its associated data), so a swapped or edited
header, a flipped bit or a truncated file is refused as a whole. Nothing is
ever half-read.

The key is ``$RICK_MASTER_KEY`` (32 random bytes in URL-safe base64, made by
:func:`generate_master_key` / ``rick creds genkey``), or a passphrase
(``$RICK_MASTER_PASSPHRASE`` or typed at a prompt) stretched with scrypt; the
salt and scrypt parameters are in the header. ``key_check`` tells a wrong key
(:class:`WrongMasterKey`) from a damaged file (:class:`VaultCorrupted`) before
anything is changed.

Every change is a read-modify-write under an exclusive ``flock`` on
``vault.json.lock``, written to a temporary file, fsynced and renamed over the
vault (atomic), then the folder is fsynced: two processes storing at the same
time lose nothing, and a crash leaves the old vault or the new one.

Every value read or written is registered with
:func:`rick_core.logs.register_secret`, so it never appears in a log line. No
error message contains a value. The vault does not write the audit log itself:
pass ``on_event`` to hear of every ``"stored"``, ``"accessed"``, ``"rotated"``
and ``"deleted"`` credential.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rick_core.logs import register_secret
from rick_core.security.kdf import (
    DEFAULT_SCRYPT,
    ScryptParams,
    check_scrypt,
    new_scrypt,
    scrypt_derive,
)

__all__ = [
    "DEFAULT_SCRYPT",
    "MASTER_KEY_ENV",
    "PASSPHRASE_ENV",
    "VAULT_FILENAME",
    "CredentialInfo",
    "CredentialNotFound",
    "InvalidMasterKey",
    "NoMasterKey",
    "ScryptParams",
    "Vault",
    "VaultCorrupted",
    "VaultCredentials",
    "VaultError",
    "VaultNotFound",
    "WrongMasterKey",
    "generate_master_key",
]

VAULT_FILENAME: Final = "vault.json"
MASTER_KEY_ENV: Final = "RICK_MASTER_KEY"
PASSPHRASE_ENV: Final = "RICK_MASTER_PASSPHRASE"

FORMAT: Final = "rick-vault"
VERSION: Final = 1
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_SALT_BYTES: Final = 16
_KEY_CHECK_PLAINTEXT: Final = b"rick vault key check"
_KEY_CHECK_AAD: Final = b"rick-vault/1/key-check"
_HEADER_KEYS: Final = frozenset({"format", "version", "kdf", "key_check", "nonce", "data"})

# Component names as in rick.toml ([brokers.<name>]); credential names a little wider.
_COMPONENT: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")

_T = TypeVar("_T")

#: ``on_event(event, component, name)``: event is "stored", "accessed", "rotated" or "deleted".
EventCallback = Callable[[str, str, str], None]


# --------------------------------------------------------------------------- errors


class VaultError(Exception):
    """The vault cannot do what was asked. The message says why and what to do;
    it never contains a secret value."""


class WrongMasterKey(VaultError):
    """The master key or passphrase given does not open the vault."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the master key (or passphrase) does not open {path}; nothing was changed. "
            f"Use the key (${MASTER_KEY_ENV}) or passphrase (${PASSPHRASE_ENV}) "
            "the vault was created with."
        )


class VaultCorrupted(VaultError):
    """The vault file is damaged, truncated, edited, or of an unknown version."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path}: the credential vault is damaged or unreadable ({reason}); nothing was "
            "read from it and nothing was changed. Restore the file from a backup, or move "
            "it away and store the credentials again with `rick creds set`."
        )


class NoMasterKey(VaultError):
    """No master key or passphrase is available, and none can be asked for."""


class InvalidMasterKey(VaultError):
    """``$RICK_MASTER_KEY`` is not 32 bytes of URL-safe base64."""


class VaultNotFound(VaultError):
    """There is no vault yet and ``create`` was false."""


class CredentialNotFound(VaultError, KeyError):
    """No such credential. A :class:`KeyError` too, as the Credentials protocol says."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- values


@frozen
class CredentialInfo:
    """What :meth:`Vault.list` tells about a credential: never its value.
    ``rotated_at`` is None until the value is first replaced."""

    component: str
    name: str
    created_at: datetime
    rotated_at: datetime | None


def generate_master_key() -> str:
    """A new random master key: 32 bytes in URL-safe base64 (44 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")


# --------------------------------------------------------------------------- the vault


class Vault:
    """The credential vault of one rick home. Make one with :meth:`open`.

    Every method reads the file again, so changes made by another process (or
    another :class:`Vault`) are seen at once.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        *,
        created: bool,
        passphrase: bool,
        on_event: EventCallback | None,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        #: True if :meth:`open` created the vault (tell the user how to keep the key).
        self.created = created
        #: True if the key is a passphrase stretched with scrypt, False for a master key.
        self.passphrase = passphrase
        self._key = key
        self._lock_path = path.with_name(path.name + ".lock")
        self._on_event = on_event

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        environ: Mapping[str, str] = os.environ,
        prompt: Callable[[str], str] | None = None,
        create: bool = True,
        on_event: EventCallback | None = None,
        scrypt: ScryptParams = DEFAULT_SCRYPT,
    ) -> Vault:
        """Open the vault in ``home`` (creating it if it does not exist and ``create``).

        The key is ``environ["RICK_MASTER_KEY"]``, or a passphrase from
        ``environ["RICK_MASTER_PASSPHRASE"]`` or from ``prompt(text)`` (which must
        not echo). A new vault uses the master key if one is set, else the
        passphrase, stretched with ``scrypt``; a passphrase typed for a new vault
        is asked twice. The whole vault is decrypted once, so a wrong key or a
        damaged file is reported here.

        Raises:
            NoMasterKey: no key, no passphrase and no ``prompt``.
            InvalidMasterKey: ``RICK_MASTER_KEY`` is malformed.
            WrongMasterKey: the key does not open the existing vault.
            VaultCorrupted: the vault file is damaged.
            VaultNotFound: there is no vault and ``create`` is false.
            VaultError: the file or folder cannot be read or written.
        """
        path = home / VAULT_FILENAME
        source = _KeySource(path, environ, prompt)
        if not path.exists():
            if not create:
                raise VaultNotFound(
                    f"no credential vault at {path} yet: store a credential with "
                    "`rick creds set <component> <name>` to create it"
                )
            kdf = source.new_kdf(scrypt)  # before taking the lock: this may prompt
            key = source.derive(kdf)
            try:
                home.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VaultError(f"cannot create the folder {home}: {exc.strerror}") from None
            vault = cls(path, key, created=True, passphrase=kdf["name"] != "raw", on_event=on_event)
            with vault._locked():
                if not path.exists():  # another process may have created it meanwhile
                    vault._write(_new_header_fields(kdf, key), _Payload.empty())
                    return vault
        header = _read_header(path)
        key = source.derive(header.kdf)
        vault = cls(
            path, key, created=False, passphrase=header.kdf["name"] != "raw", on_event=on_event
        )
        vault._read()
        return vault

    # ------------------------------------------------------------------ reading

    def get(self, component: str, name: str) -> str:
        """The value of credential ``name`` of ``component`` (registered as a secret).

        Raises:
            CredentialNotFound: (a KeyError) there is no such credential.
        """
        entry = self._read().entry(component, name)
        if entry is None:
            raise self._not_found(component, name)
        value = str(entry["value"])
        register_secret(value)
        self._emit([("accessed", component, name)])
        return value

    def list(self) -> list[CredentialInfo]:
        """Every stored credential, sorted by component then name (no values)."""
        payload = self._read()
        return [
            CredentialInfo(
                component=component,
                name=name,
                created_at=_time(entry["created_at"]),
                rotated_at=None if entry["rotated_at"] is None else _time(entry["rotated_at"]),
            )
            for component, name, entry in payload.items()
        ]

    def names(self, component: str) -> builtins.list[str]:
        """The names of ``component``'s credentials, sorted."""
        return sorted(self._read().credentials.get(component, {}))

    def fingerprint(self, component: str) -> str:
        """A short hash that changes whenever a credential of ``component`` is stored,
        rotated or deleted. It depends on names, times and revision numbers only,
        never on a value."""
        payload = self._read()
        entries = payload.credentials.get(component, {})
        summary = sorted(
            (name, e["created_at"], e["rotated_at"], e["revision"]) for name, e in entries.items()
        )
        changed = payload.changed.get(component, 0)
        text = json.dumps([component, changed, summary], separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def credentials_for(self, component: str) -> VaultCredentials:
        """The Credentials of ``component`` for its ComponentSetup: each ``get``
        reads the vault file again, so a rotation is seen at the next connect."""
        _check_component(component)
        return VaultCredentials(self, component)

    # ------------------------------------------------------------------ changing

    def set(self, component: str, name: str, value: str) -> bool:
        """Store ``value``; True if the credential is new, False if it replaced
        one (a rotation)."""
        return self.set_many(component, {name: value})[name]

    def set_many(self, component: str, values: Mapping[str, str]) -> dict[str, bool]:
        """Store several credentials of ``component`` in one atomic write: all or
        none. Returns ``{name: True if new, False if replaced}``."""
        _check_component(component)
        for name, value in values.items():
            _check_name(name)
            _check_value(component, name, value)
            register_secret(value)

        def change(payload: _Payload, now: str) -> tuple[dict[str, bool], list[_Event]]:
            result: dict[str, bool] = {}
            events: list[_Event] = []
            for name, value in values.items():
                new = payload.put(component, name, value, now)
                result[name] = new
                events.append(("stored" if new else "rotated", component, name))
            return result, events

        return self._mutate(change)

    def rotate(self, component: str, name: str, value: str) -> None:
        """Replace the value of an existing credential.

        Raises:
            CredentialNotFound: there is no such credential to rotate.
        """
        _check_component(component)
        _check_name(name)
        _check_value(component, name, value)
        register_secret(value)

        def change(payload: _Payload, now: str) -> tuple[None, list[_Event]]:
            if payload.entry(component, name) is None:
                raise self._not_found(component, name)
            payload.put(component, name, value, now)
            return None, [("rotated", component, name)]

        self._mutate(change)

    def delete(self, component: str, name: str) -> None:
        """Remove a credential.

        Raises:
            CredentialNotFound: there is no such credential.
        """

        def change(payload: _Payload, now: str) -> tuple[None, list[_Event]]:
            if not payload.remove(component, name):
                raise self._not_found(component, name)
            return None, [("deleted", component, name)]

        self._mutate(change)

    # ------------------------------------------------------------------ internals

    def _not_found(self, component: str, name: str) -> CredentialNotFound:
        return CredentialNotFound(
            f"no credential {name!r} is stored for {component!r} in {self.path}; "
            f"store it with `rick creds set {component} {name}`"
        )

    def _emit(self, events: Sequence[_Event]) -> None:
        if self._on_event is not None:
            for event in events:
                self._on_event(*event)

    def _mutate(self, change: Callable[[_Payload, str], tuple[_T, Sequence[_Event]]]) -> _T:
        """Read, ``change`` and write the vault under the lock, then report the events."""
        with self._locked():
            header = _read_header(self.path)
            payload = _decrypt(self.path, header, self._key)
            result, events = change(payload, _now())
            payload.revision += 1
            for _, component, name in events:
                payload.changed[component] = payload.revision
                entry = payload.entry(component, name)
                if entry is not None:
                    entry["revision"] = payload.revision
            self._write(header.fields(), payload)
        self._emit(events)
        return result

    def _read(self) -> _Payload:
        # No lock needed: the file is only ever replaced whole (os.replace).
        return _decrypt(self.path, _read_header(self.path), self._key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise VaultError(
                f"cannot open the lock file {self._lock_path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, fields: dict[str, Any], payload: _Payload) -> None:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = _associated_data(fields)
        plaintext = json.dumps(payload.to_json(), separators=(",", ":")).encode("utf-8")
        data = AESGCM(self._key).encrypt(nonce, plaintext, aad)
        document = {**fields, "nonce": _b64(nonce), "data": _b64(data)}
        text = json.dumps(document, indent=2) + "\n"
        folder = self.path.parent
        tmp_name = ""
        try:
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_name, 0o600)
            os.replace(tmp_name, self.path)
            tmp_name = ""
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise VaultError(
                f"cannot write the credential vault {self.path}: {exc.strerror}; "
                "nothing was changed"
            ) from None
        finally:
            if tmp_name:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)


class VaultCredentials:
    """The :class:`~rick_core.components.Credentials` of one component, read from
    the vault file at every call (a rotation is seen at the next connect)."""

    def __init__(self, vault: Vault, component: str) -> None:
        self.vault = vault
        self.component = component

    def get(self, name: str) -> str:
        """The value of ``name``; KeyError (naming it, never a value) if it is not stored."""
        return self.vault.get(self.component, name)

    def names(self) -> Sequence[str]:
        """The names of this component's stored credentials."""
        return self.vault.names(self.component)

    def fingerprint(self) -> str:
        """Changes whenever one of this component's credentials changes."""
        return self.vault.fingerprint(self.component)


# --------------------------------------------------------------------------- keys

_Event = tuple[str, str, str]


class _KeySource:
    """Where the key comes from: the environment, or a prompt."""

    def __init__(
        self, path: Path, environ: Mapping[str, str], prompt: Callable[[str], str] | None
    ) -> None:
        self.path = path
        self.raw = environ.get(MASTER_KEY_ENV, "").strip()
        self.passphrase = environ.get(PASSPHRASE_ENV, "")
        self.prompt = prompt

    def new_kdf(self, scrypt: ScryptParams) -> dict[str, Any]:
        """The kdf header of a new vault; a typed passphrase is asked twice."""
        if self.raw:
            return {"name": "raw"}
        if not self.passphrase:
            if self.prompt is None:
                raise self._no_key()
            first = self.prompt(f"Choose a passphrase for the new credential vault {self.path}")
            if not first:
                raise VaultError("an empty passphrase protects nothing; nothing was created")
            if self.prompt("Repeat the passphrase") != first:
                raise VaultError("the two passphrases differ; nothing was created")
            self.passphrase = first
        return new_scrypt(scrypt, _SALT_BYTES)

    def derive(self, kdf: Mapping[str, Any]) -> bytes:
        """The 32-byte key for a vault with header ``kdf``."""
        if kdf["name"] == "raw":
            if not self.raw:
                if self.passphrase:
                    raise NoMasterKey(
                        f"{self.path} is locked with a master key, not a passphrase: set "
                        f"{MASTER_KEY_ENV} to the key the vault was created with"
                    )
                raise self._no_key()
            return _decode_master_key(self.raw)
        if not self.passphrase:
            if self.prompt is None:
                if self.raw:
                    raise NoMasterKey(
                        f"{self.path} is locked with a passphrase, not a master key: set "
                        f"{PASSPHRASE_ENV}, or run rick in a terminal to type it"
                    )
                raise self._no_key()
            self.passphrase = self.prompt(f"Passphrase of the credential vault {self.path}")
        try:
            return scrypt_derive(self.passphrase, kdf, _KEY_BYTES)
        except (MemoryError, ValueError) as exc:  # parameters this machine cannot run
            raise VaultCorrupted(
                self.path, f"its scrypt parameters cannot be used ({type(exc).__name__})"
            ) from None

    def _no_key(self) -> NoMasterKey:
        return NoMasterKey(
            f"no master key for the credential vault {self.path}: set {MASTER_KEY_ENV} "
            f"(make one with `rick creds genkey`, then `export {MASTER_KEY_ENV}=<the key>`), "
            f"or set {PASSPHRASE_ENV}, or run rick in a terminal to type a passphrase"
        )


def _decode_master_key(text: str) -> bytes:
    problem = (
        f"{MASTER_KEY_ENV} is not a valid master key (its value is not shown): expected 32 "
        "random bytes in URL-safe base64, 44 characters, as `rick creds genkey` prints"
    )
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidMasterKey(problem) from None
    if len(key) != _KEY_BYTES or not re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
        raise InvalidMasterKey(problem)
    return key


# --------------------------------------------------------------------------- the file


@frozen
class _Header:
    kdf: dict[str, Any]
    key_check: bytes
    nonce: bytes
    data: bytes

    def fields(self) -> dict[str, Any]:
        """The header as written, without ``nonce`` and ``data``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kdf": self.kdf,
            "key_check": _b64(self.key_check),
        }


def _new_header_fields(kdf: dict[str, Any], key: bytes) -> dict[str, Any]:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    check = nonce + AESGCM(key).encrypt(nonce, _KEY_CHECK_PLAINTEXT, _KEY_CHECK_AAD)
    return {"format": FORMAT, "version": VERSION, "kdf": kdf, "key_check": _b64(check)}


def _associated_data(fields: Mapping[str, Any]) -> bytes:
    """What the data blob is authenticated with: format, version and kdf."""
    bound = {"format": fields["format"], "version": fields["version"], "kdf": fields["kdf"]}
    return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _read_header(path: Path) -> _Header:
    """Parse the vault file (nothing decrypted yet); VaultCorrupted if it is malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VaultNotFound(
            f"the credential vault {path} has disappeared; restore it from a backup"
        ) from None
    except OSError as exc:
        raise VaultError(f"cannot read the credential vault {path}: {exc.strerror}") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VaultCorrupted(path, "not valid JSON: truncated or overwritten") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise VaultCorrupted(path, "not a rick credential vault")
    version = document.get("version")
    if version != VERSION:
        raise VaultCorrupted(
            path,
            f"unknown vault format version {version!r}; this rick reads version {VERSION} "
            "(was it written by a newer rick?)",
        )
    if set(document) != _HEADER_KEYS:
        raise VaultCorrupted(path, "the header has missing or unknown fields")
    try:
        kdf = _check_kdf(document["kdf"])
        header = _Header(
            kdf=kdf,
            key_check=_unb64(document["key_check"]),
            nonce=_unb64(document["nonce"]),
            data=_unb64(document["data"]),
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise VaultCorrupted(path, "the header is malformed") from None
    if len(header.key_check) != _NONCE_BYTES + 16 + len(_KEY_CHECK_PLAINTEXT):
        raise VaultCorrupted(path, "the key check is malformed")
    if len(header.nonce) != _NONCE_BYTES or len(header.data) < 16:
        raise VaultCorrupted(path, "the encrypted data is truncated")
    return header


def _check_kdf(kdf: Any) -> dict[str, Any]:
    """The kdf header if it is one this rick accepts (bounded costs), else ValueError."""
    if kdf == {"name": "raw"}:
        return {"name": "raw"}
    return check_scrypt(kdf, min_salt=8)


def _decrypt(path: Path, header: _Header, key: bytes) -> _Payload:
    """Check the key, then decrypt and parse every entry (all or nothing)."""
    aesgcm = AESGCM(key)
    aad = _associated_data(header.fields())
    check_nonce, check = header.key_check[:_NONCE_BYTES], header.key_check[_NONCE_BYTES:]
    try:
        key_ok = aesgcm.decrypt(check_nonce, check, _KEY_CHECK_AAD) == _KEY_CHECK_PLAINTEXT
    except InvalidTag:
        key_ok = False
    try:
        plaintext = aesgcm.decrypt(header.nonce, header.data, aad)
    except InvalidTag:
        if key_ok:
            raise VaultCorrupted(
                path, "the encrypted data or its header was altered (authentication failed)"
            ) from None
        raise WrongMasterKey(path) from None
    if not key_ok:  # the data opens, so the key is right: the key check was edited
        raise VaultCorrupted(path, "the key check was altered")
    try:
        return _Payload.from_json(json.loads(plaintext.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise VaultCorrupted(path, "the decrypted entries are malformed") from None


class _Payload:
    """The decrypted contents: ``{component: {name: entry}}``, a revision counter
    (one more at every write) and, per component, the revision of its last change
    (kept after its last credential is deleted, so fingerprints never repeat)."""

    def __init__(
        self,
        revision: int,
        credentials: dict[str, dict[str, dict[str, Any]]],
        changed: dict[str, int],
    ) -> None:
        self.revision = revision
        self.credentials = credentials
        self.changed = changed

    @classmethod
    def empty(cls) -> _Payload:
        return cls(0, {}, {})

    @classmethod
    def from_json(cls, data: Any) -> _Payload:
        if not isinstance(data, dict) or set(data) != {"revision", "credentials", "changed"}:
            raise ValueError("bad payload")
        revision, credentials, changed = data["revision"], data["credentials"], data["changed"]
        if type(revision) is not int or not isinstance(credentials, dict):
            raise ValueError("bad payload")
        if not isinstance(changed, dict) or any(type(v) is not int for v in changed.values()):
            raise ValueError("bad payload")
        for entries in credentials.values():
            if not isinstance(entries, dict):
                raise ValueError("bad payload")
            for entry in entries.values():
                if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
                    raise ValueError("bad entry")
                _time(entry["created_at"])
                if entry["rotated_at"] is not None:
                    _time(entry["rotated_at"])
                if type(entry["revision"]) is not int:
                    raise ValueError("bad entry")
        return cls(revision, credentials, changed)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "credentials": self.credentials, "changed": self.changed}

    def entry(self, component: str, name: str) -> dict[str, Any] | None:
        return self.credentials.get(component, {}).get(name)

    def items(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (component, name, self.credentials[component][name])
            for component in sorted(self.credentials)
            for name in sorted(self.credentials[component])
        ]

    def put(self, component: str, name: str, value: str, now: str) -> bool:
        entries = self.credentials.setdefault(component, {})
        old = entries.get(name)
        if old is None:
            entries[name] = {"value": value, "created_at": now, "rotated_at": None, "revision": 0}
            return True
        old["value"] = value
        old["rotated_at"] = now
        return False

    def remove(self, component: str, name: str) -> bool:
        entries = self.credentials.get(component)
        if entries is None or name not in entries:
            return False
        del entries[name]
        if not entries:
            del self.credentials[component]
        return True


# --------------------------------------------------------------------------- helpers


def _check_component(component: str) -> None:
    if not isinstance(component, str) or not _COMPONENT.fullmatch(component):
        # The text given is not repeated: it might be a value typed in the wrong place.
        raise VaultError(
            "the component name is not valid: use the <name> of its table in rick.toml "
            "(letters, digits, '-' and '_')"
        )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VaultError(
            "the credential name is not valid (it is not shown, in case it is a value typed "
            "in the wrong place): use 1 to 128 letters, digits, '-', '_' and '.'"
        )


def _check_value(component: str, name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise VaultError(f"refusing an empty value for {component} {name}; nothing was stored")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("bad time")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("naive time")
    return value.astimezone(UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)
