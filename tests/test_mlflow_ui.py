"""What a user sees in the MLflow UI after a search: a real ``mlflow server`` on 127.0.0.1 over the smoke
search's runs, opened in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which the
README's test command installs: ``tests/install-system-deps.sh``). Every test saves screenshots in
its tmp dir; with ORCHESTRATOR_SCREENSHOTS=DIR set they also go to DIR, which is how the README's
images are made:

    ORCHESTRATOR_SCREENSHOTS=docs/images pytest tests/test_mlflow_ui.py
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from mlflow import MlflowClient
from PIL import Image
from servers import free_port

pytestmark = pytest.mark.integration  # whole searches: deselected by a plain `pytest`

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # a React page re-renders under the driver: look again
    RETRIED: tuple[type[Exception], ...] = (
        NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException,
        ElementNotInteractableException,
    )
except ImportError as err:  # fail the tests with the reason, not the whole collection
    SELENIUM_MISSING: ImportError | None = err
else:
    SELENIUM_MISSING = None

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FID = "fid128"  # the smoke search's FID: 128 images
ML = "workflowType=machine_learning"  # without it MLflow 3 opens every page in its GenAI layout
WIDTH, HEIGHT = 1400, 900
WAIT = 120  # seconds for one thing to appear: a page of the UI takes 10-20 s on a 2-core machine
# the run page's image chart: the resizable card around its step slider
CHART_CARD = "//*[@role='slider']/ancestor::*[contains(@class, 'react-resizable')][1]"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    # no connections but to the server: on a closed network the others are refused, and slow
    "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@pytest.fixture(scope="module")
def ui_url(smoke_search: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tracking server a user starts over a finished search. The experiment's artifact location is
    a local folder, which the server reads directly when the UI asks for an artifact."""
    folder, port = tmp_path_factory.mktemp("mlflow-ui"), free_port()
    log = folder / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            # the README's way: MLflow's server with this package's page script (ui_app.py)
            [sys.executable, "-m", "mlflow", "server", "--app-name", "orchestrator", "--host", "127.0.0.1",
             "--port", str(port),
             "--backend-store-uri", smoke_search["tracking_uri"], "--workers", "1"],
            cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + WAIT
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{log.read_text()[-3000:]}", pytrace=False)
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium at 1400x900. The tests ask for it first, so a missing browser fails them at
    once, before the smoke search runs."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the MLflow UI test needs Debian's chromium and "
                    "chromium-driver: bash tests/install-system-deps.sh (part of the README's test command)",
                    pytrace=False)
    if SELENIUM_MISSING is not None:
        pytest.fail(f"selenium is not installed ({SELENIUM_MISSING}): pip install -e '.[dev]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # an explicit driver: Selenium Manager, which would look for (and download) one, never runs
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Path]]:
    """``screenshot(name)`` saves the page as tmp_path/name.png and, when ORCHESTRATOR_SCREENSHOTS is
    set, there too (``publish=False`` keeps it out); ``down_to`` (XPath) cuts the empty page below that
    element off. Whatever happens, the last page is saved as well."""

    def save(name: str, publish: bool = True, down_to: str | None = None) -> Path:
        path = tmp_path / f"{name}.png"
        browser.save_screenshot(str(path))
        if down_to is not None:
            box = browser.find_element(By.XPATH, down_to).rect
            with Image.open(path) as image:
                bottom = min(image.height, round(box["y"] + box["height"]) + 24)
                image.crop((0, 0, image.width, bottom)).save(path, optimize=True)
        if publish and os.environ.get("ORCHESTRATOR_SCREENSHOTS"):
            folder = Path(os.environ["ORCHESTRATOR_SCREENSHOTS"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
        return path

    yield save
    browser.save_screenshot(str(tmp_path / f"{request.node.name}-last.png"))


def _wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    wait = WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=RETRIED)
    return wait.until(condition, message=f"waited {timeout:.0f} s for {what} at {driver.current_url}")


def _find(driver: Any, xpath: str, what: str) -> Any:
    return _wait(driver, lambda d: d.find_element(By.XPATH, xpath), what)


def _click(driver: Any, xpath: str, what: str) -> None:
    _wait(driver, lambda d: d.find_element(By.XPATH, xpath).click() or True, what)


def _open(driver: Any, url: str, ready: str, what: str) -> None:
    """Load a page of the UI and wait for the element ``ready`` (XPath) that says it has its data."""
    driver.get(url)
    _find(driver, ready, what)
    # the assistant panel opens by itself on a first visit and takes a third of the width
    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close' and "
                                                 "contains(@data-component-id, 'assistant')]"):
        button.click()


def _natural_size(driver: Any, img: Any) -> tuple[int, int]:
    """The size of the image the browser decoded: (0, 0) until it has loaded, or when it is broken."""
    return tuple(driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img))


def _row(run_id: str) -> str:
    return f"//*[@role='row'][@row-id='{run_id}']"


def _cell(run_id: str, column: str) -> str:
    return f"{_row(run_id)}//*[@col-id='{column}']"


def _show_columns(driver: Any, show: list[str], hide: list[str]) -> None:
    """Through the runs table's "Columns" menu, as a user picks them."""
    _click(driver, "//button[normalize-space(.)='Columns']", "the Columns menu")
    search = _find(driver, "//input[@placeholder='Search columns']", "the column search box")
    for name in [*show, *hide]:
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(name)  # the list is virtualised: filter it so the column is rendered
        node = (f"//div[contains(@class, 'tree-treenode')][.//*[contains(@class, 'tree-title')]"
                f"[normalize-space(.)='{name}']]/span[contains(@class, 'tree-checkbox')]")
        box = _find(driver, node, f"column {name!r} in the Columns menu")
        if ("tree-checkbox-checked" in (box.get_attribute("class") or "")) != (name in show):
            box.click()
    search.send_keys(Keys.ESCAPE)


def _fit_columns(driver: Any, columns: list[str]) -> None:
    """Widen columns to their values, as a double click on a header's edge does."""
    for column in columns:
        edge = _find(driver, f"//*[@role='columnheader'][@col-id='{column}']/*[contains(@class, 'resize')]",
                     f"the edge of column {column}")
        ActionChains(driver).double_click(edge).perform()


def _trials(client: MlflowClient, search: dict) -> list:
    query = f"tags.`mlflow.parentRunId` = '{search['parent_run_id']}'"
    return client.search_runs([search["experiment_id"]], filter_string=query)


def _showcase_trial(client: MlflowClient, search: dict) -> Any:
    """The best trial that ran to the end: it has a sample grid at every evaluation."""
    completed = [t for t in _trials(client, search) if t.data.tags.get("outcome") == "completed"]
    assert completed, "the smoke search has no completed trial"
    return min(completed, key=lambda t: t.data.metrics[f"{FID}_best"])


def _step(artifact: str) -> int | None:
    """The step in the name MLflow gives a grid logged with ``log_image(key=..., step=...)``."""
    found = re.search(r"step\W(\d+)\W", unquote(artifact))
    return int(found.group(1)) if found else None


def test_the_experiment_list_opens_the_search_on_its_runs_best_first(
    browser: Any, ui_url: str, smoke_search: dict, screenshot: Callable[..., Path]
) -> None:
    """Where a user starts: the experiment list of a browser that never saw MLflow, one click."""
    client = MlflowClient(smoke_search["tracking_uri"])
    browser.get(f"{ui_url}/")
    browser.execute_script("window.localStorage.clear()")  # as a first visit: MLflow's switch unset
    _open(browser, f"{ui_url}/", "//a[normalize-space(.)='smoke']", "the search in the experiment list")
    _click(browser, "//a[normalize-space(.)='smoke']", "the search's name")
    best_first = f"orderByKey=metrics.%60{FID}_best%60&orderByAsc=true"
    _wait(browser, lambda d: f"/experiments/{smoke_search['experiment_id']}/runs?" in d.current_url
          and best_first in d.current_url, "the runs table, sorted by FID")
    parent = smoke_search["parent_run_id"]
    _find(browser, _row(parent), "the search's run")
    trials = sorted(_trials(client, smoke_search), key=lambda t: t.data.metrics[f"{FID}_best"])
    if not browser.find_elements(By.XPATH, _row(trials[0].info.run_id)):  # nested under the search, closed
        _click(browser, f"{_cell(parent, 'attributes.`Run Name`')}//button", "the search run's expander")

    def shown_order(driver: Any) -> Any:
        rows = driver.find_elements(By.XPATH, "//*[@role='row'][@row-id]")
        rows = sorted(rows, key=lambda r: int(r.get_attribute("row-index")))  # the grid's order, not DOM's
        # a row is drawn twice, in the grid's pinned and scrolling parts; sorted on a metric, the runs
        # are flat and the search's own run (which has no FID) comes last
        ids = list(dict.fromkeys(r.get_attribute("row-id") for r in rows))
        order = [i for i in ids if i != parent]
        return order if len(order) == len(trials) else None

    assert _wait(browser, shown_order, "the trials' rows") == [t.info.run_id for t in trials]
    assert browser.find_elements(By.XPATH, "//*[normalize-space(.)='Sort: fid128_best']")
    screenshot("mlflow-landing", down_to=_row(trials[-1].info.run_id))


def test_runs_table_lists_the_trials_with_their_fid(
    browser: Any, ui_url: str, smoke_search: dict, screenshot: Callable[..., Path]
) -> None:
    client = MlflowClient(smoke_search["tracking_uri"])
    trials, parent = _trials(client, smoke_search), smoke_search["parent_run_id"]
    assert len(trials) == 4
    best_first = f"orderByKey=metrics.%60{FID}_best%60&orderByAsc=true"
    _open(browser, f"{ui_url}/#/experiments/{smoke_search['experiment_id']}/runs?{ML}&{best_first}",
          _row(parent), "the search's run in the runs table")
    if not browser.find_elements(By.XPATH, _row(trials[0].info.run_id)):  # nested under the search, closed
        _click(browser, f"{_cell(parent, 'attributes.`Run Name`')}//button", "the search run's expander")
    _show_columns(browser, show=[f"{FID}_best", FID, "loss", "lr_g", "outcome"],
                  hide=["Dataset", "Source", "Models"])
    for trial in trials:
        run_id = trial.info.run_id
        name = _find(browser, f"{_cell(run_id, 'attributes.`Run Name`')}//a", f"{run_id}'s name").text
        best = _find(browser, _cell(run_id, f"metrics.`{FID}_best`"), f"{run_id}'s {FID}_best").text
        assert name == trial.info.run_name
        assert float(best) == pytest.approx(trial.data.metrics[f"{FID}_best"], rel=1e-9), best
        outcome = _find(browser, _cell(run_id, "tags.`outcome`"), f"{run_id}'s outcome").text
        assert outcome == trial.data.tags["outcome"]
    _fit_columns(browser, ["tags.`outcome`", f"metrics.`{FID}_best`"])
    screenshot("mlflow-experiment", down_to=_row(parent))


def test_trial_artifact_view_shows_its_sample_grid(
    browser: Any, ui_url: str, smoke_search: dict, screenshot: Callable[..., Path], tmp_path: Path
) -> None:
    client = MlflowClient(smoke_search["tracking_uri"])
    trial = _showcase_trial(client, smoke_search)
    run_id = trial.info.run_id
    grids = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert grids, f"no sample grids logged for {run_id}"
    grid = max(grids, key=lambda path: _step(path) or 0)  # the last one
    with Image.open(client.download_artifacts(run_id, grid, str(tmp_path))) as image:
        expected = image.size
    _open(browser, f"{ui_url}/#/experiments/{smoke_search['experiment_id']}/runs/{run_id}/artifacts?{ML}",
          "//*[normalize-space(text())='images']", "the images folder in the artifact tree")
    for folder in ("curves", "checkpoint"):  # the other artifacts a trial leaves
        _find(browser, f"//*[normalize-space(text())='{folder}']", f"the {folder} folder")
    _click(browser, "//*[normalize-space(text())='images']", "the images folder")
    _click(browser, f"//*[normalize-space(text())='{Path(grid).name}']", f"{grid} in the artifact tree")

    def shown(driver: Any) -> Any:
        for img in driver.find_elements(By.TAG_NAME, "img"):
            if img.is_displayed() and _natural_size(driver, img)[0] > 0:
                return _natural_size(driver, img)
        return None

    assert _wait(browser, shown, f"the preview of {grid}") == expected
    # clicking a long file name scrolls the tree sideways: put it back for the picture
    browser.execute_script("document.querySelectorAll('*').forEach(e => { e.scrollLeft = 0; })")
    screenshot("mlflow-trial-artifacts", publish=False)


def _tidy_image_chart(driver: Any) -> None:
    """As a user makes room for the grid: configure the image chart to leave out the run's parameters,
    and drag its corner down so the whole grid shows."""
    menu = "//*[@data-testid='experiment-view-compare-runs-card-menu']"
    _click(driver, f"//*[@role='slider']/ancestor::*[.{menu}][1]{menu}", "the image chart's menu")
    _click(driver, "//*[@role='menuitem'][normalize-space(.)='Configure']", "Configure")
    _click(driver, "//*[@role='dialog']//button[@role='switch']", "Show run parameters")
    _click(driver, "//*[@role='dialog']//button[normalize-space(.)='Save changes']", "Save changes")
    _wait(driver, lambda d: not d.find_elements(By.XPATH, "//*[@role='dialog']"), "the dialog to close")
    corner = _find(driver, f"{CHART_CARD}/*[last()]", "the image chart's corner")
    drag = ActionChains(driver).click_and_hold(corner)
    drag.move_by_offset(0, 50).move_by_offset(0, 50).release().perform()


def _show_step(driver: Any, step: int) -> tuple[int, int]:
    """Move the image chart's step slider to ``step`` as a user does, by clicking its track; return the
    natural size of the grid it then shows."""

    def moved(d: Any) -> Any:
        thumb = d.find_element(By.XPATH, "//*[@role='slider']")
        low, high = float(thumb.get_attribute("aria-valuemin")), float(thumb.get_attribute("aria-valuemax"))
        track = thumb.find_element(By.XPATH, "./ancestor::span[@data-orientation='horizontal'][last()]")
        # the slider snaps to the logged steps. A click on the thumb itself does not move it, so click
        # the far side of the track first; and stay a little inside the track's ends
        where = min(max((step - low) / (high - low), 0.02), 0.98)
        for x in (0.98 if where < 0.5 else 0.02, where):
            offset = round(track.size["width"] * (x - 0.5))
            ActionChains(d).move_to_element_with_offset(track, offset, 0).click().perform()
        for img in d.find_elements(By.TAG_NAME, "img"):
            if _step(img.get_attribute("src") or "") == step and _natural_size(d, img)[0] > 0:
                return _natural_size(d, img)
        return None

    return _wait(driver, moved, f"the sample grid of step {step}")


def test_trial_sample_grids_step_through_its_evaluations(
    browser: Any, ui_url: str, smoke_search: dict, screenshot: Callable[..., Path]
) -> None:
    """The run page's charts: the trial's FID and, on the image chart's slider, a grid per evaluation."""
    client = MlflowClient(smoke_search["tracking_uri"])
    trial = _showcase_trial(client, smoke_search)
    steps = [m.step for m in client.get_metric_history(trial.info.run_id, FID)]
    assert len(steps) >= 2, steps
    run = f"{ui_url}/#/experiments/{smoke_search['experiment_id']}/runs/{trial.info.run_id}"
    search = "//input[@placeholder='Search metric charts']"
    _open(browser, f"{run}/model-metrics?{ML}", search, "the run's charts")
    # the filter is a regular expression over metric names; image charts always pass it
    _find(browser, search, "the chart filter").send_keys(f"^{FID}")
    _find(browser, f"//*[normalize-space(text())='{FID}_best']", f"the {FID}_best chart")
    _find(browser, "//*[@role='slider']", "the image chart's step slider")
    _tidy_image_chart(browser)
    sizes = [_show_step(browser, step) for step in steps]  # every evaluation's grid, in order
    assert len(set(sizes)) == 1 and sizes[0][0] > 0, sizes
    # the pointer off the charts, so their hover toolbars hide
    overview = browser.find_element(By.XPATH, "//*[@role='tab'][normalize-space(.)='Overview']")
    ActionChains(browser).move_to_element(overview).perform()
    screenshot("mlflow-trial-images", down_to=CHART_CARD)
