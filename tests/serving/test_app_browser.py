"""ana-app in a real browser: start the console command on localhost, drive Debian's headless
Chromium with Playwright, upload images and read the prediction from the page.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` Python package;
``playwright install`` is never needed (it would download another browser). ``make test-browser``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ana_lightning.predict import Predictor

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _require_browser() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM}: `apt-get install chromium` (make test-browser does it)"
        )
    pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright Python package is absent: pip install playwright "
        "(never `playwright install`: the test uses Debian's Chromium)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _ana_app(model: Path, cwd: Path) -> Iterator[str]:
    """``ana-app`` started as a user would, on a free localhost port; yields its URL."""
    port = _free_port()
    exe = Path(sys.executable).with_name("ana-app")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "ana_lightning.cli.app"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log_path = cwd / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd + [f"ckpt_path={model}", f"server_port={port}", "max_file_size=5mb"],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"ana-app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"ana-app did not answer on {url}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def app_url(trained_checkpoint, tmp_path_factory):
    """The app over the session's single-label checkpoint."""
    _require_browser()
    with _ana_app(trained_checkpoint[2], tmp_path_factory.mktemp("app")) as url:
        yield url


@pytest.fixture(scope="module")
def multi_label_app(tmp_path_factory):
    """The app over a multi-label model exported to TorchScript (its class need not be importable)."""
    _require_browser()
    from test_export import write_multi_label_checkpoint

    from ana_lightning.export import export_model

    cwd = tmp_path_factory.mktemp("app_multi")
    model = export_model(
        write_multi_label_checkpoint(cwd / "multi.ckpt"), format="torchscript", output=cwd
    ).model_path
    with _ana_app(model, cwd) as url:
        yield url, model


@pytest.fixture(scope="module")
def page():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _upload(page, url: str, files) -> str:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
    page.set_input_files("#upload input[type=file]", files)
    page.wait_for_function(
        "() => /Predicted|No pattern|Could not read/.test(document.querySelector('#prediction')?.innerText ?? '')",
        timeout=60_000,
    )
    return page.inner_text("#prediction")


def test_upload_an_image_and_read_the_predicted_label(app_url, page, trained_checkpoint):
    root, _, ckpt = trained_checkpoint
    predictor = Predictor.load(ckpt)
    images = sorted(root.rglob("*.png"))
    preds = list(predictor.predict_paths(images))
    # Images with different predicted labels where the model gives them: the page must follow the image.
    chosen = {p.labels: Path(p.path) for p in preds}
    for labels, image in list(chosen.items())[:2]:
        text = _upload(page, app_url, str(image))
        (label,) = labels
        want = next(p for p in preds if p.path == str(image))
        l1, l2, _ = predictor.hierarchy(label)
        assert predictor.display_name(label) in text, text
        assert f"p = {float(want.probabilities[predictor.class_names.index(label)]):.3f}" in text, text
        assert f"{l1} › {l2} › {label}" in text, text
        others = [predictor.display_name(c) for c in predictor.class_names if c != label]
        assert not any(o in text for o in others), text
        # The bar chart of every class is drawn.
        page.wait_for_selector("#probabilities canvas, #probabilities svg", timeout=30_000)


def test_a_broken_upload_is_reported_on_the_page(app_url, page, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    text = _upload(page, app_url, str(broken))
    assert "Could not read this file" in text, text


def test_threshold_slider_of_a_multi_label_model(multi_label_app, page, trained_checkpoint, tmp_path):
    url, model = multi_label_app
    predictor = Predictor.load(model)
    image = sorted(trained_checkpoint[0].rglob("*.png"))[0]
    (want,) = predictor.predict_paths([image])
    text = _upload(page, url, str(image))
    assert page.is_visible("#threshold")
    for c in predictor.class_names:  # the model's own per-class thresholds decide first
        assert (predictor.display_name(c) in text) == (c in want.labels), text
    slider = page.locator("#threshold input[type=range]")
    for value, expect in (("0", "Predicted patterns"), ("1", "No pattern reaches the threshold")):
        slider.fill(value)
        page.wait_for_function(
            f"() => document.querySelector('#prediction')?.innerText.includes({expect!r})", timeout=30_000
        )
    slider.fill("0")
    page.wait_for_function(
        "() => document.querySelector('#prediction')?.innerText.includes('Predicted patterns')",
        timeout=30_000,
    )
    text = page.inner_text("#prediction")
    assert all(predictor.display_name(c) in text for c in predictor.class_names), text
