"""The operator console in real Chromium against a real 4-node cluster.

Debian's ``chromium`` (apt) driven by Playwright for Python with ``executable_path``; no browser
is downloaded. Skips, naming the missing piece, only where Playwright or Chromium is absent.
One cluster and one browser for the whole story, to stay within CI's budget:

wrong token refused with a visible message; held txs listed with reasons and the sender's chart;
keyboard opens and cancels the confirmation; release from the page commits on every node; reject
removes it; another operator's decision shows live; a hostile memo renders as text; a committed
tx's proof verifies in the browser and tampered proofs do not; a file's anchor is found; the
cluster view shows a killed validator down and back, and a console whose own node restarts says
"reconnecting" and recovers. Screenshots of each view go to ``$VIGIL_CONSOLE_SCREENSHOTS``
(default: the test's temporary directory); docs/console/ holds a set from a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "playwright.sync_api",
    reason="playwright not installed: pip install -e '.[browser]' (scripts/test does)",
)

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import expect as pw_expect

from node.chain.tx import make_anchor
from node.errors import UNAUTHORIZED
from node.tools import devnet
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium not found: apt-get install chromium (scripts/test does as root)",
        allow_module_level=True,
    )

ACCOUNTS = 40
PLAN = [k for k in range(ACCOUNTS) for _ in range(1 + k % 4)]
DETECTOR = {
    "warmup_txs": len(PLAN),
    "min_train_txs": len(PLAN),
    "retrain_every_blocks": 1_000_000,
    "quarantine_ttl_ms": 600_000,
}
RELEASE, REJECT, OTHER = 2, 6, 10  # senders of the abnormal transfers
HOSTILE_SENDER = ACCOUNTS + 1
HOSTILE_MEMO = '<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'
ANCHORED_FILE = b"the contract the console checks\n"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NETWORK_NOISE = ("Failed to load resource", "WebSocket connection", "net::ERR_")


def never_seen(tag: int) -> bytes:
    return hashlib.sha256(b"vigil-console-never-seen-%d" % tag).digest()[:20]


def log(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def warm_up(c: LocalCluster, p: int) -> None:
    rng = random.Random(1)
    plan = list(PLAN)
    rng.shuffle(plan)
    for i in range(0, len(plan), 20):
        raws = [
            c.transfer(k, c.address((k + 1 + rng.randrange(2)) % ACCOUNTS), rng.randint(100, 1000))
            for k in plan[i : i + 20]
        ]
        last = c.submit(p, raws)[-1]["result"]["hash"]
        wait_for(f"warm-up {last}", lambda h=last: c.tx_status(p, h) == "committed")
    wait_for("detector warm", lambda: c.rpc(p, "detector_status")["warm"])


def test_console_in_chromium(tmp_path: Path) -> None:
    shots = Path(os.environ.get("VIGIL_CONSOLE_SCREENSHOTS", str(tmp_path / "screenshots")))
    shots.mkdir(parents=True, exist_ok=True)
    overrides = {"detector": DETECTOR, "block": {"interval_ms": 50}}
    started = time.monotonic()
    with LocalCluster(tmp_path, n=4, overrides=overrides, bench_accounts=ACCOUNTS + 4) as c:
        p = int(c.rpc(0, "node_status")["primary"])
        warm_up(c, p)
        log("cluster warm", primary=p, seconds=round(time.monotonic() - started, 1))

        # The hostile anchor: committed or held, the console must show its memo as text.
        digest = hashlib.sha256(ANCHORED_FILE).digest()
        anchor = make_anchor(
            c.account_key(HOSTILE_SENDER), devnet.CHAIN_ID, digest, HOSTILE_MEMO.encode(), 1, 0
        )
        hostile = c.submit(p, [anchor.encode()])[0]["result"]
        # Abnormal transfers, held at the primary; two later txs of RELEASE wait behind its hold.
        raws = [c.transfer(k, never_seen(k), 10**11) for k in (RELEASE, REJECT, OTHER)]
        held = [a["result"] for a in c.submit(p, raws)]
        assert [h["status"] for h in held] == ["quarantined"] * 3, held
        a_hash, b_hash, o_hash = (h["hash"] for h in held)
        # An ordinary follow-up (a payee and an amount of its warm-up habits): it waits behind the
        # hold rather than being held on its own.
        usual = c.transfer(RELEASE, c.address((RELEASE + 1) % ACCOUNTS), 500)
        later = [a["result"] for a in c.submit(p, [usual])]
        assert later[0]["status"] == "waiting", later
        if hostile["status"] != "quarantined":
            wait_for("hostile anchor", lambda: c.tx_status(p, hostile["hash"]) == "committed")
        log("held", release=a_hash, reject=b_hash, other=o_hash, hostile=hostile)

        base = c.cluster.rpc_url(p).rstrip("/")
        token = c.cluster.admin_token
        errors: list[str] = []
        noise_ok = [False]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})

            def watch(page: Page, name: str) -> None:
                def on_console(msg: Any) -> None:
                    if msg.type == "error":
                        if noise_ok[0] and any(n in msg.text for n in NETWORK_NOISE):
                            return
                        errors.append(f"{name} console: {msg.text}")

                page.on("console", on_console)
                page.on("pageerror", lambda exc: errors.append(f"{name} pageerror: {exc}"))

            page = context.new_page()
            watch(page, "main")

            # --- a wrong token is refused, visibly; the fragment leaves the address bar.
            page.goto(f"{base}/console#token=not-the-token")
            pw_expect(page.locator(".queue-error")).to_contain_text("refused the admin token")
            pw_expect(page.locator(".token-refused")).to_be_visible()
            assert "token" not in page.url, page.url
            page.screenshot(path=str(shots / "01-wrong-token.png"))
            log("wrong token refused", url=page.url)

            # --- the right token, typed once: the queue lists the three holds, newest first.
            page.fill("#token-input", token)
            page.press("#token-input", "Enter")
            cards = page.locator("#queue-list > li.held")
            pw_expect(cards).to_have_count(3)
            first = cards.first
            pw_expect(first).to_contain_text("score")
            pw_expect(first).to_contain_text("threshold")
            pw_expect(page.locator(f'li[data-hash="{a_hash}"] .waiting')).to_contain_text("nonce")
            pw_expect(page.locator(f'li[data-hash="{a_hash}"] .held-label')).to_have_text("held")
            reasons = page.locator(f'li[data-hash="{a_hash}"] .reasons li').all_text_contents()
            assert reasons, "no reasons shown"
            assert all(r.strip() for r in reasons), reasons
            assert page.evaluate("sessionStorage.length") == 1
            page.screenshot(path=str(shots / "02-queue.png"), full_page=True)
            log("queue", held=3, reasons=reasons)

            # --- keyboard: Tab reaches a Release button, Enter opens the dialog, Escape cancels.
            page.locator("#filter-sender").focus()
            for _ in range(60):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.classList.contains('release')"):
                    break
            else:
                raise AssertionError("Tab never reached a Release button")
            page.keyboard.press("Enter")
            pw_expect(page.locator("#confirm")).to_be_visible()
            page.keyboard.press("Escape")
            pw_expect(page.locator("#confirm")).to_be_hidden()
            log("keyboard ok")

            # --- filter by sender.
            page.fill("#filter-sender", c.address(REJECT).hex()[:12])
            pw_expect(cards).to_have_count(1)
            page.fill("#filter-sender", "")
            pw_expect(cards).to_have_count(3)

            # --- release A from the page: it commits on every node, with the tx waiting on it.
            page.click(f'li[data-hash="{a_hash}"] button.release')
            pw_expect(page.locator("#confirm")).to_be_visible()
            page.screenshot(path=str(shots / "03-confirm-release.png"))
            page.click("#confirm-ok")
            pw_expect(page.locator(f'li[data-hash="{a_hash}"]')).to_have_count(0)
            for i in range(c.n):
                wait_for(f"released on node {i}", lambda i=i: c.tx_status(i, a_hash) == "committed")
            wait_for("waiting tx", lambda: c.tx_status(p, later[0]["hash"]) == "committed")
            log("released from the page", committed_on=list(range(c.n)))

            # --- reject B from the page.
            page.click(f'li[data-hash="{b_hash}"] button.reject')
            page.click("#confirm-ok")
            pw_expect(page.locator(f'li[data-hash="{b_hash}"]')).to_have_count(0)
            assert c.tx_status(p, b_hash) == "rejected"
            log("rejected from the page", status=c.tx_status(p, b_hash))

            # --- another operator (curl, CLI) releases the last one: the page follows by itself.
            c.rpc(p, "quarantine_release", [o_hash], admin=True)
            pw_expect(page.locator(f'li[data-hash="{o_hash}"]')).to_have_count(0)
            pw_expect(page.locator(".decided")).to_contain_text("another operator")
            log("another operator's release seen")

            # --- phone width: readable, nothing wider than the screen.
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{base}/console#tx/{a_hash}")
            pw_expect(page.locator("[data-verdict=verified]")).to_be_visible(timeout=20_000)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 392, f"page {width}px wide on a 390px screen"
            page.screenshot(path=str(shots / "09-phone-tx.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 800})

            # --- model health.
            page.goto(f"{base}/console#health")
            pw_expect(page.locator(".health")).to_contain_text("Threshold")
            pw_expect(page.locator("svg.scores .threshold")).to_have_count(1)
            page.wait_for_timeout(2500)  # two samples for the hold-rate line
            page.screenshot(path=str(shots / "04-model-health.png"), full_page=True)
            log("model health shown")

            # --- the committed tx's proof verifies in the browser ...
            page.goto(f"{base}/console#tx/{a_hash}")
            verdict = page.locator("#verdict")
            pw_expect(verdict.locator("[data-verdict=verified]")).to_be_visible(timeout=20_000)
            text = verdict.inner_text()
            assert "Verified" in text, text
            assert "genesis validators signed" in text, text
            page.screenshot(path=str(shots / "05-tx-verified.png"), full_page=True)
            log("proof verified", verdict=text.splitlines()[0])

            # ... and tampered answers do not: a flipped certificate signature, a wrong branch.
            for what, method, tamper in (
                ("signature", "block_get", _flip_signature),
                ("merkle", "tx_proof", _flip_root),
            ):
                page.route(f"{base}/rpc", _tampering(method, tamper))
                page.goto(f"{base}/console#queue")
                page.goto(f"{base}/console#tx/{a_hash}")
                bad = verdict.locator("[data-verdict=failed]")
                pw_expect(bad).to_be_visible(timeout=20_000)
                log("tampered proof refused", tampered=what, verdict=bad.inner_text())
                if what == "signature":
                    page.screenshot(path=str(shots / "06-tx-tampered.png"), full_page=True)
                page.unroute(f"{base}/rpc")

            # --- the hostile memo is text, and nothing of it ran.
            page.goto(f"{base}/console#tx/{hostile['hash']}")
            pw_expect(page.locator("#tx-memo")).to_have_text(HOSTILE_MEMO)
            assert page.locator("main img").count() == 0
            assert page.locator("main script").count() == 0
            assert page.evaluate("window.__pwned === undefined")
            log("hostile memo rendered as text")

            # --- the anchor page hashes the file here and finds its anchor.
            if hostile["status"] != "quarantined":
                f = tmp_path / "contract.txt"
                f.write_bytes(ANCHORED_FILE)
                page.goto(f"{base}/console#anchor")
                page.set_input_files("#anchor-file", str(f))
                pw_expect(page.locator("[data-anchor=found]")).to_be_visible()
                assert page.locator("#anchor-digest").inner_text() == "0x" + digest.hex()
                page.screenshot(path=str(shots / "07-anchor.png"), full_page=True)
                log("anchor found", digest="0x" + digest.hex())

            # --- the cluster: a killed validator shows down, then back; a console on the
            # killed node says "reconnecting" and recovers by itself.
            k = next(i for i in range(c.n) if i != p)
            page.goto(f"{base}/console#cluster")
            row = page.locator(f'#validators tr[data-validator="{k}"]')
            pw_expect(row.locator(".state")).to_have_text("up")
            pw_expect(page.locator("#blocks tbody tr").first).to_be_visible()
            page.screenshot(path=str(shots / "08-cluster.png"), full_page=True)
            other = context.new_page()
            watch(other, f"node{k}")
            other.goto(c.cluster.rpc_url(k).rstrip("/") + "/console#cluster")
            pw_expect(other.locator("#conn")).to_have_text("live")
            noise_ok[0] = True  # failed fetches to a dead node are the browser's, not ours
            c.kill(k)
            pw_expect(row.locator(".state")).to_have_text("down", timeout=20_000)
            pw_expect(other.locator("#conn")).to_have_text("reconnecting…", timeout=20_000)
            page.screenshot(path=str(shots / "10-cluster-node-down.png"), full_page=True)
            log("validator down", validator=k)
            c.start(k)
            pw_expect(row.locator(".state")).to_have_text("up", timeout=30_000)
            pw_expect(other.locator("#conn")).to_have_text("live", timeout=30_000)
            pw_expect(other.locator(f'#validators tr[data-validator="{k}"] .state')).to_have_text(
                "up"
            )
            noise_ok[0] = False
            log("validator back", validator=k)
            browser.close()

        assert not errors, errors
        log("no console errors", seconds=round(time.monotonic() - started, 1))

        # --- server side: admin methods refuse cross-origin callers even with the token.
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "quarantine_list"}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        foreign = _post(c.cluster.rpc_url(p), body, {**headers, "Origin": "http://evil.example"})
        assert foreign["error"]["code"] == UNAUTHORIZED, foreign
        assert "cross-origin" in foreign["error"]["message"]
        assert isinstance(_post(c.cluster.rpc_url(p), body, headers)["result"], list)
        log("cross-origin admin call refused", answer=foreign["error"])


def _post(url: str, body: bytes, headers: dict[str, str]) -> Any:
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _tampering(method: str, tamper: Any) -> Any:
    def handle(route: Any) -> None:
        req = route.request
        try:
            payload = json.loads(req.post_data or "null")
        except ValueError:
            payload = None
        if not (isinstance(payload, dict) and payload.get("method") == method):
            route.continue_()
            return
        resp = route.fetch()
        answer = resp.json()
        if "result" in answer:
            tamper(answer["result"])
        route.fulfill(response=resp, body=json.dumps(answer))

    return handle


def _flip(hex_value: str) -> str:
    last = int(hex_value[-1], 16) ^ 1
    return hex_value[:-1] + format(last, "x")


def _flip_signature(block: dict[str, Any]) -> None:
    block["certificate"]["commits"][0]["signature"] = _flip(
        block["certificate"]["commits"][0]["signature"]
    )


def _flip_root(proof: dict[str, Any]) -> None:
    if proof["branch"]:
        proof["branch"][0] = _flip(proof["branch"][0])
    else:
        proof["index"] = proof["index"] + 1
