"""PBFT wire messages: canonical encoding, schemas, and what each signature covers.

Every message is one canonical msgpack map with a ``type`` field. Its signature covers the
canonical encoding of the map without ``sig`` but *with* ``chain`` (the chain id, which is not
sent), under the domain tag ``vigil/pbft/<type>/v1``: a vote from another chain or of another
kind never verifies. A PRE-PREPARE's signature covers the digest, not the payload; the payload is
bound by ``sha256(payload) == digest`` (or ``b""`` with ``NULL_DIGEST`` for a null request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from common import codec
from common.crypto import SIGNATURE_BYTES, SigningKey
from consensus.api import NULL_DIGEST

DIGEST_BYTES = 32
VALIDATORS_MAX = 1024
PREPARED_MAX = 4096

Verify = Callable[[bytes, bytes, bytes, bytes], bool]
Sigs = tuple[tuple[int, bytes], ...]


def domain(kind: str) -> bytes:
    return b"vigil/pbft/" + kind.encode() + b"/v1"


def payload_digest(payload: bytes) -> bytes:
    """The digest a payload is ordered under; the null request has its own fixed digest."""
    return NULL_DIGEST if payload == b"" else codec.sha256(payload)


def _sigs_check(max_items: int) -> codec.Check:
    index = codec.uint(VALIDATORS_MAX - 1)
    sig = codec.raw(SIGNATURE_BYTES)

    def check(v: Any, name: str) -> Sigs:
        if not isinstance(v, list) or len(v) > max_items:
            raise codec.CodecError(f"{name}: expected a list of at most {max_items} pairs")
        out: list[tuple[int, bytes]] = []
        for i, pair in enumerate(v):
            if not isinstance(pair, list) or len(pair) != 2:
                raise codec.CodecError(f"{name}[{i}]: expected [index, signature]")
            out.append((index(pair[0], f"{name}[{i}]"), sig(pair[1], f"{name}[{i}]")))
        if [p[0] for p in out] != sorted({p[0] for p in out}):
            raise codec.CodecError(f"{name}: indexes not strictly increasing")
        return tuple(out)

    return check


def _sigs_value(sigs: Sigs) -> list[list[Any]]:
    return [[i, s] for i, s in sigs]


_U = codec.uint()
_SENDER = codec.uint(VALIDATORS_MAX - 1)
_DIGEST = codec.raw(DIGEST_BYTES)
_SIG = codec.raw(SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class PrePrepare:
    view: int
    seq: int
    digest: bytes
    payload: bytes
    sender: int
    sig: bytes = b""

    kind = "pre_prepare"

    def signed_body(self) -> dict[str, Any]:
        return {"view": self.view, "seq": self.seq, "digest": self.digest, "sender": self.sender}

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "payload": self.payload, "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Prepare:
    view: int
    seq: int
    digest: bytes
    sender: int
    sig: bytes = b""

    kind = "prepare"

    def signed_body(self) -> dict[str, Any]:
        return {"view": self.view, "seq": self.seq, "digest": self.digest, "sender": self.sender}

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class CommitVote:
    """A COMMIT; 2f+1 of them over one (view, seq, digest) form a commit certificate."""

    view: int
    seq: int
    digest: bytes
    sender: int
    sig: bytes = b""

    kind = "commit"

    def signed_body(self) -> dict[str, Any]:
        return {"view": self.view, "seq": self.seq, "digest": self.digest, "sender": self.sender}

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """``digest`` is the hash chain over committed payload digests up to ``seq``."""

    seq: int
    digest: bytes
    sender: int
    sig: bytes = b""

    kind = "checkpoint"

    def signed_body(self) -> dict[str, Any]:
        return {"seq": self.seq, "digest": self.digest, "sender": self.sender}

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """Proof that (view, seq, digest) prepared: the primary's PRE-PREPARE signature plus 2f
    PREPARE signatures from distinct backups (Castro and Liskov, section 4.4, the set P)."""

    view: int
    seq: int
    digest: bytes
    payload: bytes
    pre_prepare_sig: bytes
    prepares: Sigs

    def value(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "seq": self.seq,
            "digest": self.digest,
            "payload": self.payload,
            "pp_sig": self.pre_prepare_sig,
            "prepares": _sigs_value(self.prepares),
        }

    @staticmethod
    def from_value(v: dict[str, Any]) -> PreparedCert:
        return PreparedCert(
            v["view"], v["seq"], v["digest"], v["payload"], v["pp_sig"], v["prepares"]
        )


@dataclass(frozen=True, slots=True)
class ViewChange:
    """VIEW-CHANGE to ``view``: the sender's stable checkpoint with its proof, and the prepared
    certificates it holds above that checkpoint."""

    view: int
    stable_seq: int
    stable_digest: bytes
    stable_proof: Sigs
    prepared: tuple[PreparedCert, ...]
    sender: int
    sig: bytes = b""
    epoch: int = 0  # the sender's retraction epoch: a RETRACT voids this VIEW-CHANGE if >= epoch

    kind = "view_change"

    def signed_body(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "stable_seq": self.stable_seq,
            "stable_digest": self.stable_digest,
            "stable_proof": _sigs_value(self.stable_proof),
            "prepared": [p.value() for p in self.prepared],
            "sender": self.sender,
            "epoch": self.epoch,
        }

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class NewView:
    """NEW-VIEW: 2f+1 VIEW-CHANGEs for ``view`` and the new primary's PRE-PREPAREs for every seq
    between the highest stable checkpoint and the highest prepared seq among them."""

    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    sender: int
    sig: bytes = b""

    kind = "new_view"

    def signed_body(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "view_changes": [vc.value() for vc in self.view_changes],
            "pre_prepares": [pp.value() for pp in self.pre_prepares],
            "sender": self.sender,
        }

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Retract:
    """RETRACT: the sender takes back every VIEW-CHANGE it signed for a view above ``view`` with
    an epoch at or below ``epoch``, to return to ``view`` (a view change nobody joined).

    Replicas active in ``view`` persist it, answer with a RETRACT-ACK, and from then on refuse any
    NEW-VIEW that contains such a VIEW-CHANGE; the sender returns only after 2f+1 of them
    (itself included). docs/consensus.md has the safety argument.
    """

    view: int
    epoch: int
    sender: int
    sig: bytes = b""

    kind = "retract"

    def signed_body(self) -> dict[str, Any]:
        return {"view": self.view, "epoch": self.epoch, "sender": self.sender}

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class RetractAck:
    """RETRACT-ACK: the sender (active in ``view``) has persisted ``target``'s RETRACT(view, epoch)
    and will refuse every NEW-VIEW containing a VIEW-CHANGE it voids."""

    view: int
    epoch: int
    target: int
    sender: int
    sig: bytes = b""

    kind = "retract_ack"

    def signed_body(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "epoch": self.epoch,
            "target": self.target,
            "sender": self.sender,
        }

    def value(self) -> dict[str, Any]:
        return {**self.signed_body(), "sig": self.sig}


Message = (
    PrePrepare | Prepare | CommitVote | Checkpoint | ViewChange | NewView | Retract | RetractAck
)
SlotMessage = PrePrepare | Prepare | CommitVote


def signing_content(msg: Message, chain_id: str) -> bytes:
    if isinstance(msg, PrePrepare | Prepare | CommitVote):
        return vote_content(msg.kind, msg.view, msg.seq, msg.digest, msg.sender, chain_id)
    if isinstance(msg, Checkpoint):
        return checkpoint_content(msg.seq, msg.digest, msg.sender, chain_id)
    return codec.encode({"chain": chain_id, "type": msg.kind, **msg.signed_body()})


MessageT = TypeVar(
    "MessageT",
    PrePrepare,
    Prepare,
    CommitVote,
    Checkpoint,
    ViewChange,
    NewView,
    Retract,
    RetractAck,
)


def sign(msg: MessageT, key: SigningKey, chain_id: str) -> MessageT:
    """The message with its ``sig`` filled in by ``key``."""
    sig = key.sign(domain(msg.kind), signing_content(msg, chain_id))
    return replace(msg, sig=sig)


def vote_content(
    kind: str, view: int, seq: int, digest: bytes, sender: int, chain_id: str
) -> bytes:
    """What a PRE-PREPARE/PREPARE/COMMIT signature covers, rebuilt from certificate fields."""
    body = {"view": view, "seq": seq, "digest": digest, "sender": sender}
    return codec.encode({"chain": chain_id, "type": kind, **body})


def checkpoint_content(seq: int, digest: bytes, sender: int, chain_id: str) -> bytes:
    body = {"seq": seq, "digest": digest, "sender": sender}
    return codec.encode({"chain": chain_id, "type": "checkpoint", **body})


def encode(msg: Message) -> bytes:
    return codec.encode({"type": msg.kind, **msg.value()})


# --- decoding --------------------------------------------------------------------------------


def _schemas(payload_bytes_max: int) -> dict[str, codec.Check]:
    payload = codec.raw(max_size=payload_bytes_max)
    vote = {
        "type": codec.one_of("prepare", "commit"),
        "view": _U,
        "seq": _U,
        "digest": _DIGEST,
        "sender": _SENDER,
        "sig": _SIG,
    }
    pre_prepare = {**vote, "type": codec.one_of("pre_prepare"), "payload": payload}
    pp_inner = {k: v for k, v in pre_prepare.items() if k != "type"}
    prepared = codec.struct(
        {
            "view": _U,
            "seq": _U,
            "digest": _DIGEST,
            "payload": payload,
            "pp_sig": _SIG,
            "prepares": _sigs_check(VALIDATORS_MAX),
        }
    )
    vc_fields = {
        "view": _U,
        "stable_seq": _U,
        "stable_digest": _DIGEST,
        "stable_proof": _sigs_check(VALIDATORS_MAX),
        "prepared": codec.list_of(prepared, PREPARED_MAX),
        "sender": _SENDER,
        "sig": _SIG,
        "epoch": _U,
    }
    return {
        "pre_prepare": codec.struct(pre_prepare),
        "prepare": codec.struct(vote),
        "commit": codec.struct(vote),
        "checkpoint": codec.struct(
            {
                "type": codec.one_of("checkpoint"),
                "seq": _U,
                "digest": _DIGEST,
                "sender": _SENDER,
                "sig": _SIG,
            }
        ),
        "view_change": codec.struct({"type": codec.one_of("view_change"), **vc_fields}),
        "new_view": codec.struct(
            {
                "type": codec.one_of("new_view"),
                "view": _U,
                "view_changes": codec.list_of(codec.struct(vc_fields), VALIDATORS_MAX),
                "pre_prepares": codec.list_of(codec.struct(pp_inner), PREPARED_MAX),
                "sender": _SENDER,
                "sig": _SIG,
            }
        ),
        "retract": codec.struct(
            {
                "type": codec.one_of("retract"),
                "view": _U,
                "epoch": _U,
                "sender": _SENDER,
                "sig": _SIG,
            }
        ),
        "retract_ack": codec.struct(
            {
                "type": codec.one_of("retract_ack"),
                "view": _U,
                "epoch": _U,
                "target": _SENDER,
                "sender": _SENDER,
                "sig": _SIG,
            }
        ),
    }


_SCHEMA_CACHE: dict[int, dict[str, codec.Check]] = {}


def _view_change(v: dict[str, Any]) -> ViewChange:
    return ViewChange(
        v["view"],
        v["stable_seq"],
        v["stable_digest"],
        v["stable_proof"],
        tuple(PreparedCert.from_value(p) for p in v["prepared"]),
        v["sender"],
        v["sig"],
        v["epoch"],
    )


def _pre_prepare(v: dict[str, Any]) -> PrePrepare:
    return PrePrepare(v["view"], v["seq"], v["digest"], v["payload"], v["sender"], v["sig"])


def decode(data: bytes, payload_bytes_max: int, message_bytes_max: int) -> Message:
    """Parse one message; anything malformed raises ``codec.CodecError``."""
    schemas = _SCHEMA_CACHE.get(payload_bytes_max)
    if schemas is None:
        schemas = _SCHEMA_CACHE.setdefault(payload_bytes_max, _schemas(payload_bytes_max))
    value = codec.decode(data, message_bytes_max)
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise codec.CodecError("message without a type")
    schema = schemas.get(value["type"])
    if schema is None:
        raise codec.CodecError("unknown message type")
    v = schema(value, "")
    match v["type"]:
        case "pre_prepare":
            return _pre_prepare(v)
        case "prepare":
            return Prepare(v["view"], v["seq"], v["digest"], v["sender"], v["sig"])
        case "commit":
            return CommitVote(v["view"], v["seq"], v["digest"], v["sender"], v["sig"])
        case "checkpoint":
            return Checkpoint(v["seq"], v["digest"], v["sender"], v["sig"])
        case "view_change":
            return _view_change(v)
        case "retract":
            return Retract(v["view"], v["epoch"], v["sender"], v["sig"])
        case "retract_ack":
            return RetractAck(v["view"], v["epoch"], v["target"], v["sender"], v["sig"])
        case _:
            return NewView(
                v["view"],
                tuple(_view_change(x) for x in v["view_changes"]),
                tuple(_pre_prepare(x) for x in v["pre_prepares"]),
                v["sender"],
                v["sig"],
            )
