"""Notebook 00 in a real JupyterLab, driven by headless Chromium (Selenium + the Debian chromedriver).

The test starts JupyterLab on a free localhost port (with a token) in a temporary root holding a copy of
``00_quickstart.ipynb`` whose parameters point at a temporary synthetic dataset, opens the notebook, runs every
cell with JupyterLab's *Run All Cells* command, waits for the match explorer to render, reads the predicted
match from the widget's DOM (``data-sd4m-state`` of the clickable source image, and the results table), clicks
the source image elsewhere and checks that the prediction follows the click.

Skipped when ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is missing, unless ``SD4MATCH_REQUIRE_BROWSER``
is set (``.ci/run`` sets it after installing them, so CI cannot skip it silently). JupyterLab, its kernels and the
browser are stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_quickstart.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "sd4match-browser-test"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--disable-extensions", "--window-size=1500,1100")
IMG_SIZE = 128  # keeps the kernel's work small: features at 128 px, one noise copy


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (f"{' and '.join(missing)} not found: install them with "
                  f"`apt-get install -y chromium chromium-driver` (.ci/run does)")
        if os.environ.get("SD4MATCH_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_parameters(nb, **values) -> None:
    """Rewrite ``name = value  # comment`` lines of the parameters cell with new literal values."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = []
    for line in cell.source.splitlines():
        name = line.split(" = ", 1)[0].strip()
        if name in values and " = " in line:
            comment = line.split("  # ", 1)[1] if "  # " in line else ""
            line = f"{name} = {values.pop(name)!r}" + (f"  # {comment}" if comment else "")
        lines.append(line)
    assert not values, f"not in the parameters cell: {sorted(values)}"
    cell.source = "\n".join(lines)


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
        return r.status


def _stop_lab(proc: subprocess.Popen, base: str, runtime_dir: Path) -> None:
    """Ask the server to shut down (it stops its kernels), then end it and any kernel still running, by pid."""
    try:
        req = urllib.request.Request(f"{base}/api/shutdown?token={TOKEN}", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).close()  # noqa: S310 - localhost only
    except OSError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    # kernels run in sessions of their own: find ours by the connection files in our private runtime folder
    marker = str(runtime_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port, root = a folder with a prepared copy of notebook 00.

    Yields ``(base_url, lab_root)``.
    """
    _require_browser()
    pytest.importorskip("selenium")
    from sd4match_utils.data import ensure_synthetic, write_example

    roots = ensure_synthetic(tmp_path / "synthetic")
    write_example(tmp_path / "own", images_per_category=4)
    lab_root = tmp_path / "lab"
    lab_root.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_parameters(nb, data_root=str(roots["spair"]), custom_root=str(tmp_path / "own"),
                   out_dir=str(tmp_path / "figures"), run_dir=str(tmp_path / "runs"), img_size=IMG_SIZE, ensemble=1,
                   custom_img_size=IMG_SIZE, train_steps=0, display_size=256)
    nbformat.write(nb, lab_root / NOTEBOOK.name)

    jupyter = tmp_path / "jupyter"
    kernel_dir = jupyter / "path" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    settings = jupyter / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))  # all cells in DOM
    news = jupyter / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    runtime_dir = jupyter / "runtime"
    env = {**os.environ, "JUPYTER_PATH": str(jupyter / "path"), "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
           "JUPYTER_RUNTIME_DIR": str(runtime_dir), "JUPYTER_DATA_DIR": str(jupyter / "data"),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "agg", "TOKENIZERS_PARALLELISM": "false"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={lab_root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.allow_root=True",
           f"--LabApp.user_settings_dir={jupyter / 'settings'}", f"--LabApp.workspaces_dir={jupyter / 'workspaces'}"]
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=lab_root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited early:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                if _get(f"{base}/api/status?token={TOKEN}") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("JupyterLab did not answer within 60 s")
            time.sleep(0.5)
        yield base, lab_root
    finally:
        _stop_lab(proc, base, runtime_dir)
        log.close()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through the Debian chromedriver; quit at the end whatever happens."""
    _require_browser()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


_NOTEBOOK_STATE = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content) return null;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of cells) {
  for (const o of c.model.outputs.toJSON()) {
    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  }
}
return {kernel: kernel ? kernel.status : null, cells: cells.length,
        done: cells.filter(c => c.model.executionCount !== null).length,
        pending: cells.filter(c => c.node.classList.contains('jp-mod-executing') ||
                                   (c.promptNode && c.promptNode.textContent.includes('*'))).length,
        errors: errors};
"""

_EXPLORER_STATE = """
const imgs = Array.from(document.querySelectorAll('img.sd4m-click-image'));
for (const img of imgs) {
  const state = JSON.parse(img.dataset.sd4mState || '{}');
  if (state.pred && img.getBoundingClientRect().width > 0) {
    img.id = img.id || 'sd4m-explorer-source';
    const rows = Array.from(img.closest('.sd4m-explorer').querySelectorAll('tr.sd4m-pred'))
                      .map(r => [r.dataset.prompt, parseFloat(r.dataset.x), parseFloat(r.dataset.y)]);
    return {id: img.id, state: state, rows: rows};
  }
}
return null;
"""


def _wait(driver, script: str, ok, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if ok(value):
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state: {value!r}")


def test_explorer_follows_clicks_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from sd4match_utils.widgets import fraction_to_pixel

    base, _ = lab
    started = time.monotonic()
    try:
        browser.get(f"{base}/lab/tree/{NOTEBOOK.name}?token={TOKEN}")
        _wait(browser, _NOTEBOOK_STATE, lambda s: s and s["kernel"] == "idle" and s["cells"] > 5, 90,
              "the notebook to open with an idle python3 kernel")
        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")
        state = _wait(browser, _NOTEBOOK_STATE,
                      lambda s: s and (s["errors"] or (s["done"] == s["cells"] and s["kernel"] == "idle"
                                                       and not s["pending"])),
                      150, "Run All Cells to finish")
        assert not state["errors"], f"a cell failed: {state['errors']}"

        first = _wait(browser, _EXPLORER_STATE, lambda s: s is not None, 30, "the match explorer to render")
        assert set(first["state"]["pred"]) == {"empty", "text"}
        assert {r[0] for r in first["rows"]} == {"empty", "text"}  # the table shows the same predictions
        for label, x, y in first["rows"]:
            assert [x, y] == pytest.approx(first["state"]["pred"][label], abs=1e-2)

        img = browser.find_element(By.ID, first["id"])
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
        w, h = img.size["width"], img.size["height"]
        before = first
        for u, v in ((0.15, 0.85), (0.85, 0.2), (0.5, 0.95)):  # far from the first keypoint (the initial click)
            ActionChains(browser).move_to_element_with_offset(img, int((u - 0.5) * w), int((v - 0.5) * h)).click().perform()
            after = _wait(browser, _EXPLORER_STATE, lambda s, n=before["state"]["n"]: s and s["state"]["n"] > n, 30,
                          "the explorer to react to the click")
            expected = fraction_to_pixel(u, v, IMG_SIZE)
            assert after["state"]["click"] == pytest.approx(expected, abs=2.0)  # within a display pixel or two
            if after["state"]["pred"] != before["state"]["pred"]:
                break
            before = after
        assert after["state"]["pred"] != first["state"]["pred"], "the predicted match did not move with the click"
        for label, x, y in after["rows"]:
            assert [x, y] == pytest.approx(after["state"]["pred"][label], abs=1e-2)
        browser.save_screenshot(str(tmp_path / "explorer.png"))  # for a person to look at (pytest --basetemp)

        # the annotation helper rendered too, showing the first example photo and its keypoints
        helper = browser.find_element(By.CSS_SELECTOR, ".sd4m-annotator img.sd4m-click-image")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", helper)
        shown = json.loads(helper.get_attribute("data-sd4m-state"))
        assert shown["image"].endswith(".png") and shown["points"] and helper.size["width"] > 0
        browser.save_screenshot(str(tmp_path / "annotator.png"))
    except BaseException:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        raise
    assert time.monotonic() - started < 240
