"""Write the KV-event fixtures kvevents' tests decode, with msgspec, the encoder vLLM uses.

The structs below restate the schema of vLLM's `vllm/distributed/kv_events.py` (field names,
order, types and which fields default to None), once as maps with the tag under "type" (current
vLLM) and once as positional arrays (older vLLM, `array_like=True`). Run it in a virtualenv with
msgspec installed:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install msgspec==0.23.0
    /tmp/venv/bin/python tools/kv-events/fixtures.py kvevents/tests/fixtures
"""

import sys
from pathlib import Path

import msgspec


def schema(array_like):
    """vLLM's event structs in one layout."""
    options = dict(omit_defaults=True, gc=False, array_like=array_like)

    class Batch(msgspec.Struct, **options):
        ts: float
        events: list
        data_parallel_rank: int | None = None

    class Event(msgspec.Struct, tag=True, **options):
        pass

    class BlockStored(Event):
        block_hashes: list
        parent_block_hash: int | bytes | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class BlockRemoved(Event):
        block_hashes: list
        medium: str | None
        group_idx: int | None = None

    class AllBlocksCleared(Event):
        pass

    return Batch, BlockStored, BlockRemoved, AllBlocksCleared


def roundtrip_batch(array_like):
    """A batch the Rust encoder writes byte for byte: every event type, hashes up to 2^64 - 1,
    token ids past 16 bits, a LoRA adapter, a group index."""
    Batch, BlockStored, BlockRemoved, AllBlocksCleared = schema(array_like)
    first = list(range(16)) + [151643] * 16
    return Batch(
        ts=1765152000.25,
        events=[
            BlockStored([0x123456789ABCDEF0, 2**64 - 1], None, first, 16, None, "GPU", None),
            BlockStored(
                [42], 2**64 - 1, list(range(100, 116)), 16, 7, "GPU", "travel-helper-v1",
                group_idx=0,
            ),
            BlockRemoved([0x123456789ABCDEF0], "GPU"),
            BlockRemoved([42, 2**64 - 1], "CPU", group_idx=1),
            AllBlocksCleared(),
        ],
        data_parallel_rank=0,
    )


def decode_only_batch():
    """Fields the Rust encoder never writes: byte hashes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0),
    extra keys, cache-spec fields, no data-parallel rank."""
    Batch, BlockStored, BlockRemoved, _ = schema(False)
    sha = bytes(range(32))
    return Batch(
        ts=1765152001.5,
        events=[
            BlockStored(
                [sha], None, list(range(16)), 16, None, "GPU", "travel-helper-v2",
                extra_keys=[("travel-helper-v2", "salt")],
                kv_cache_spec_kind="full_attention",
                kv_cache_spec_sliding_window=4096,
            ),
            BlockRemoved([sha], None),
        ],
    )


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch-map.msgpack").write_bytes(msgspec.msgpack.encode(roundtrip_batch(False)))
    (out / "batch-array.msgpack").write_bytes(msgspec.msgpack.encode(roundtrip_batch(True)))
    (out / "batch-extras.msgpack").write_bytes(msgspec.msgpack.encode(decode_only_batch()))
    print(f"msgspec {msgspec.__version__}: fixtures written to {out}")


if __name__ == "__main__":
    main()
