"""Start and stop the two UIs (`mlflow server`, `dagster-webserver`) on 127.0.0.1, and launch the system Chromium
for Playwright. One copy, shared by tests/test_browser_ui.py and tools/screenshots.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Debian's package, installed by `make browser`; Playwright must never download a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
# The machines this runs on have no outside network: without the background-networking switches Chromium keeps
# retrying refused connections (updates, sync, QUIC probes) and slows the pages under test.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}


class ServerError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    ready_path: str
    _log_handle: object = field(default=None, repr=False)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode} before it was ready; log tail:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise ServerError(
            f"{self.name} not ready at {self.url}{self.ready_path} after {timeout:.0f} s ({last}); log tail:\n{self.tail()}"
        )

    def stop(self, grace: float = 20.0) -> int:
        """SIGTERM to the whole process group (the servers fork workers and a code-server), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        # Children that outlived the leader would still hold the port and the SQLite file.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._log_handle is not None:
            self._log_handle.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # The test process points MLFLOW_TRACKING_URI at its own store; the servers get their stores explicitly.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def _spawn(name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path, port: int, ready_path: str) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches the workers too
    )
    return Server(name, f"http://127.0.0.1:{port}", proc, log, ready_path, handle)


def start_mlflow(backend_db: Path, artifacts: Path, log: Path, *, timeout: float = 120.0) -> Server:
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{backend_db.resolve()}", "--artifacts-destination", str(artifacts.resolve()),
        "--workers", "1",
    ]
    # The job-execution workers (huey consumers) are not needed to browse runs and cost a core each.
    env = _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = _spawn("mlflow server", cmd, env=env, cwd=backend_db.parent, log=log, port=port, ready_path="/health")
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_dagster(dagster_home: Path, log: Path, *, cwd: Path = ROOT, module: str = "orchestration.definitions",
                  timeout: float = 240.0) -> Server:
    port = free_port()
    dagster_home.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-m", module]
    env = _env(DAGSTER_HOME=str(dagster_home.resolve()))
    server = _spawn("dagster-webserver", cmd, env=env, cwd=cwd, log=log, port=port, ready_path="/server_info")
    try:
        server.wait_ready(timeout)
        wait_code_location(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_code_location(server: Server, timeout: float) -> None:
    """/server_info answers before the code location has loaded; a broken definitions module would otherwise show up
    only as missing assets in the page, so its import error is reported here verbatim."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            server.url + "/graphql", data=json.dumps({"query": _LOCATIONS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            entries = json.load(resp)["data"]["workspaceOrError"].get("locationEntries", [])
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
            if errors:
                raise ServerError(f"code location {errors[0]['name']} failed to load:\n{errors[0]['locationOrLoadError']['message']}")
            return
        time.sleep(1)
    raise ServerError(f"dagster code location still loading after {timeout:.0f} s; log tail:\n{server.tail()}")


def mlflow_experiment_id(server: Server, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as resp:
        return json.load(resp)["experiment"]["experiment_id"]


def mlflow_runs(server: Server, experiment_id: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 200, "order_by": ["attributes.start_time DESC"]})
    req = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/runs/search", data=body.encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp).get("runs", [])


def launch_chromium(playwright):
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


# First-visit popups would cover what the test asserts and what the README shows: Dagster's community sign-up
# (shown only on 127.0.0.1/localhost), MLflow's assistant panel that opens itself once. Both remember a dismissal in
# localStorage, so the dismissal is written before the pages' scripts run; nothing is sent to either server. Dagster's
# left navigation starts collapsed to leave the width to the graph, and MLflow opens in its model-training mode (runs,
# models) rather than the GenAI one (traces, prompts) it defaults to.
_FIRST_VISIT = """
try {
  localStorage.setItem("communityNux", JSON.stringify("1"));
  localStorage.setItem("dagster-nav-collapsed", "true");
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
  localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"));
} catch (e) {}
"""

# Dagster draws asset nodes in full only from this zoom up (`tY=.6` in the 1.13 bundle); below it a node shows a
# middle-truncated name ("restorati…_dataset"), and at full zoom nodes off screen are not drawn at all.
DAGSTER_FULL_NODE_SCALE = 0.6
_COLLAPSED_GROUP = "[class*=CollapsedGroupNode_collapsedGroupNodeBox]"
_MINIMAL_NODE = "[class*=AssetNode_minimalAssetNodeBox]"
_GRAPH_SVG = "svg[class*=AssetGraphExplorer_svgContainer]"


def dagster_graph(page):
    """The asset graph's drawing, without the sidebar and search box that can name the same assets."""
    return page.locator(_GRAPH_SVG)


def quiet_first_visit(context) -> None:
    context.add_init_script(_FIRST_VISIT)


def _wait_dagster_graph(page, timeout_ms: int) -> None:
    page.get_by_role("button", name="Materialize all").wait_for(timeout=timeout_ms)
    page.locator(_GRAPH_SVG).wait_for(timeout=timeout_ms)


def open_dagster_asset_graph(page, base_url: str, *, full_nodes: bool, timeout_ms: int = 60_000,
                             names: tuple[str, ...] = ()) -> None:
    """The global asset lineage with every group expanded. With `full_nodes`, the viewport grows until zoom-to-fit
    lands at a scale where every node is drawn in full with its whole name, whatever the graph's size, and every
    one of `names` is drawn (off-screen nodes are not drawn at all, and zoom-to-fit can land on a layout that
    grows once the groups expand)."""
    page.goto(base_url + "/asset-groups")
    _wait_dagster_graph(page, timeout_ms)
    # ⌥E toggles between all-expanded and all-collapsed; a fresh profile starts collapsed, and the check makes sure.
    for _ in range(2):
        if page.locator(_COLLAPSED_GROUP).count() == 0:
            break
        page.keyboard.press("Alt+KeyE")
        page.locator(_COLLAPSED_GROUP).first.wait_for(state="detached", timeout=timeout_ms)
    if not full_nodes:
        return
    for _ in range(6):
        size = page.viewport_size
        if page.locator(_MINIMAL_NODE).count() == 0:
            graph = page.locator(_GRAPH_SVG)
            if all(graph.get_by_text(name, exact=True).count() for name in names):
                return
            grow_w, grow_h = size["width"] * 0.3, size["height"] * 0.3  # some node is off screen: more room
        else:
            svg = page.locator(_GRAPH_SVG)
            layout_w, layout_h = float(svg.get_attribute("width")), float(svg.get_attribute("height"))
            area = svg.locator("xpath=..").bounding_box()
            target = DAGSTER_FULL_NODE_SCALE * 1.04
            grow_w = max(0.0, layout_w * target - area["width"])
            grow_h = max(0.0, layout_h * target - area["height"])
        # Zoom-to-fit runs on load, so the page is reloaded at the new size (the expanded groups are remembered).
        page.set_viewport_size({"width": int(size["width"] + grow_w * 1.05) + 40,
                                "height": int(size["height"] + grow_h * 1.05) + 40})
        page.reload()
        _wait_dagster_graph(page, timeout_ms)
        page.wait_for_timeout(500)  # zoom-to-fit settles one frame after the layout
    raise AssertionError(f"asset graph still drawn with truncated names at viewport {page.viewport_size}")


def settle(page, timeout_ms: int = 30_000) -> None:
    """Best effort before a screenshot: the asset nodes fetch their status after the graph is drawn ("Loading…")."""
    import re

    try:
        page.get_by_text(re.compile(r"^Loading")).first.wait_for(state="detached", timeout=timeout_ms)
    except Exception:  # a screenshot with a spinner still beats none
        pass
