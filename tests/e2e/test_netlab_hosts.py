"""Issue 15 across hosts: validators set up one host at a time, TLS links, faults, a move.

Four namespaces with their own addresses (node/tools/netlab.py): each node made by ``vigil
init``'s function at its own address, the genesis by ``vigil genesis``'s from the lines init
printed, peers named ``v<j>.lab`` in every node's ``p2p.peers`` (names resolved per dial), P2P and
RPC over TLS, 25 ms links and ~100 transfers/s. One run shows, with a raw capture on the bridge:

- commits under load;
- the primary cut off (link down): a view change, commits go on, it catches up after the heal;
- two nodes cut off: no quorum, commits stop, and resume within 30 s of the heal;
- a validator moves to a new address (its config changes, genesis does not; its name is
  repointed): it rejoins and catches up;
- the capture holds no transaction bytes in plaintext (no sender key of any transfer), though
  it saw the traffic (TLS application-data records) and does see a plaintext control (metrics).

Prints one JSON transcript (heights, views, recovery times). Skipped without namespaces.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from node.tools import netns
from node.tools.netlab import Lab
from node.tools.netlab_capture import Capture
from node.tools.netlab_load import Load
from node.tools.netlab_phases import finish, run_phase, sample

pytestmark = [pytest.mark.e2e, pytest.mark.netlab]

SEED = 15
RATE = 100.0
RESUME_BOUND_S = 30.0

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # metrics scrapes


def _heights(lab: Lab) -> list[int | None]:
    return list(sample(lab).heights)


def test_hosts_tls_faults_move_and_capture(tmp_path: Path) -> None:
    reason = netns.unsupported_reason()
    if reason is not None:
        pytest.skip(f"network fault lab unavailable: {reason}")
    transcript: dict[str, object] = {}
    with Lab(tmp_path, seed=SEED, delay_ms=25.0) as lab:
        assert lab.net is not None
        cfg = (tmp_path / "cluster" / "node0" / "config.toml").read_text()
        assert "v1.lab:26600" in cfg
        assert "insecure = false" in cfg
        assert "p2p_url" not in (tmp_path / "cluster" / "genesis.json").read_text()
        with Capture(lab.net.bridge) as cap, Load(lab, rate=RATE) as load:
            lab.wait_for("height 3 under load", lambda: min(h or 0 for h in _heights(lab)) >= 3, 60)
            transcript["warm"] = _heights(lab)
            pp = run_phase(lab, load, "primary_partition", 8.0, SEED)
            transcript["primary_partition"] = pp.to_json()
            two = run_phase(lab, load, "two_node_partition", 6.0, SEED)
            transcript["two_node_partition"] = two.to_json()
            # Move validator 3: new address, config change only, name repointed.
            before = max(h or 0 for h in _heights(lab))
            t0 = time.monotonic()
            new_ip = lab.move(3)
            lab.wait_for(
                "moved node 3 connected and caught up",
                lambda: (
                    (s := lab.status(3)) is not None
                    and len(s["peers"]) == 3
                    and s["height"] > before
                ),
                60,
            )
            transcript["move"] = {
                "node": 3,
                "new_ip": new_ip,
                "height_before": before,
                "rejoined_s": round(time.monotonic() - t0, 2),
                "heights_after": _heights(lab),
            }
            # Plaintext control: one metrics scrape crosses the bridge unencrypted.
            with NO_PROXY.open(f"http://{lab.node_ips[0]}:26800/metrics", timeout=5) as resp:
                assert b"vigil_chain_height" in resp.read()
            final = finish(lab, load, 15.0)
            transcript["final"] = {
                "heights": final.heights,
                "views": final.views,
                "converge_s": final.converge_s,
                "first_divergent": final.chain.first_divergent,
            }
        data = cap.data
        needles = [k.public_key for k in load.keys[: min(len(load.keys), 300)]]
        plaintext_hits = sum(data.count(n) for n in needles)
        transcript["capture"] = {
            "frames": cap.frames,
            "bytes": len(data),
            "tls_app_records": data.count(b"\x17\x03\x03"),
            "tx_sender_keys_in_clear": plaintext_hits,
            "metrics_control_seen": b"vigil_chain_height" in data,
            "accepted_txs": len(load.accepted),
        }
    print(json.dumps(transcript))
    cap_t = transcript["capture"]
    assert isinstance(cap_t, dict)
    assert cap_t["metrics_control_seen"], "the capture does not see plaintext at all"
    assert cap_t["tls_app_records"] > 100
    assert plaintext_hits == 0, "transaction bytes crossed the bridge in the clear"
    assert pp.view_change_s is not None, pp.to_json()
    assert pp.first_commit_s is not None, pp.to_json()
    assert pp.converge_s is not None, pp.to_json()
    # No quorum on either side: at most the pipeline in flight when the cut began (4), plus one
    # for the 150 ms sampling of "height at fault".
    assert two.height_at_heal <= two.height_at_fault + 4 + 1, two.to_json()
    assert two.heal_commit_s is not None, two.to_json()
    assert two.heal_commit_s <= RESUME_BOUND_S, two.to_json()
