"""The web page at GET /: its files and the report-picture route over TestClient, and the page itself
end to end in headless Chromium against a real `vae serve` process.

The browser is Debian's chromium with its chromedriver (scripts/browser_setup.sh installs them where
they are missing). Selenium is pointed at both binaries, so its manager never downloads anything.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.http.api import web
from service.http.app import create_app
from service.http.settings import Settings
from tests.helpers import missing_tool, start_server, stop

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 30


# ---- the routes, without a browser ----


@pytest.fixture(scope="module")
def client(digits_model_dir):
    with TestClient(create_app(Settings(model_dir=digits_model_dir))) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_client(digits_model_dir):
    with TestClient(create_app(Settings(model_dir=digits_model_dir, api_key="s3cret"))) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ],
)
def test_page_files_are_public(keyed_client, path, media_type):
    response = keyed_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["content-security-policy"] == web.PAGE_POLICY  # no inline script would run


def test_page_refers_to_its_files(client):
    page = client.get("/").text
    assert '<script src="/ui/app.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/ui/style.css">' in page


def test_unknown_page_file_is_404(client):
    response = client.get("/ui/secret.txt")
    assert response.status_code == 404
    assert response.json() == {
        "error": "/ui/secret.txt: no such file; the page's files are app.js, index.html, style.css",
        "code": "not_found",
    }


def test_report_lists_the_training_pictures(client):
    response = client.get("/v1/model/report")
    assert response.status_code == 200
    names = [p["name"] for p in response.json()["pictures"]]
    assert names == ["calibration.png", "curves.png", "latents.png", "reconstructions.png", "samples.png"]
    assert response.json()["pictures"][0]["url"] == "/v1/model/report/calibration.png"


def test_report_picture_is_served(client, digits_model_dir):
    response = client.get("/v1/model/report/curves.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == (digits_model_dir / "report" / "curves.png").read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "missing.png",  # allowed name, no such file
        "index.html",  # in report/, but not a picture
        "manifest.json",  # in the model directory, not in report/
        ".hidden.png",
        "..%2Fmanifest.json",  # an encoded separator
        "%2E%2E%2Fmanifest.json",
        "..%5Cmanifest.json",  # a backslash
        "curves.png%00.txt",
    ],
)
def test_report_refuses_other_names_with_404(client, name):
    response = client.get(f"/v1/model/report/{name}")
    assert response.status_code == 404
    assert response.json()["code"] in {"not_found", "http_error"}
    assert b"format_version" not in response.content


@pytest.mark.parametrize("raw", ["%2E%2E/manifest.json", "%2E%2E/%2E%2E/digits/manifest.json", "%2E%2E"])
def test_report_traversal_through_dot_segments_never_reaches_the_manifest(client, raw):
    # Encoded dots pass the client's normalisation and arrive in the app's path as "../": the route
    # never matches a name with a separator, and ".." is no picture name.
    response = client.get(f"/v1/model/report/{raw}")
    assert response.status_code == 404
    assert b"format_version" not in response.content


def test_report_refuses_a_link_out_of_the_folder(tmp_path, digits_model_dir):
    model = tmp_path / "model"
    shutil.copytree(digits_model_dir, model)
    (model / "report" / "leak.png").symlink_to(model / "manifest.json")
    with TestClient(create_app(Settings(model_dir=model))) as client:
        assert "leak.png" not in [p["name"] for p in client.get("/v1/model/report").json()["pictures"]]
        response = client.get("/v1/model/report/leak.png")
        assert response.status_code == 404
        assert response.json() == {
            "error": "'leak.png': no such picture in the model's report/ (see GET /v1/model/report)",
            "code": "not_found",
        }


def test_report_without_a_report_folder_lists_nothing(tmp_path, digits_model_dir):
    model = tmp_path / "model"
    shutil.copytree(digits_model_dir, model, ignore=shutil.ignore_patterns("report"))
    with TestClient(create_app(Settings(model_dir=model))) as client:
        assert client.get("/v1/model/report").json() == {"pictures": []}
        assert client.get("/v1/model/report/curves.png").status_code == 404


def test_report_needs_the_api_key_like_the_model_card(keyed_client):
    assert keyed_client.get("/v1/model/report").status_code == 401
    assert keyed_client.get("/v1/model/report/curves.png").status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    assert keyed_client.get("/v1/model/report/curves.png", headers=auth).status_code == 200


# ---- the page in a browser ----


def _have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture(scope="module")
def browser(request, tmp_path_factory):
    """Headless Chromium through Selenium, with a fresh profile; `make system` installs it."""
    if not _have_browser():
        missing_tool(request, "chromium and chromedriver are", "the web page was not tested in a browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, css: str, condition=None):
    """The first element matching css once it exists (and satisfies condition), within WAIT_S."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        for element in d.find_elements(By.CSS_SELECTOR, css):
            if condition is None or condition(element):
                return element
        return False

    return WebDriverWait(driver, WAIT_S).until(found, f"nothing matched {css!r}")


def _loaded_image(element) -> bool:
    return element.get_attribute("src") and element.parent.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", element
    )


def _assert_not_blank(png: bytes, min_colours: int):
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    not_white = float(np.mean(np.any(pixels < 245, axis=1)))
    assert colours > min_colours, f"only {colours} colours on the screenshot"
    assert not_white > 0.05, f"only {not_white:.1%} of the screenshot is not white"


def _assert_no_script_errors(driver):
    """Nothing in the browser's console but failed requests (the 4xx answers a test provokes)."""
    entries = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not entries, entries


DROP = """
const [name, b64, zone] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/png" }));
zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


def _value(element) -> float:
    return float(element.get_attribute("data-value"))


def _digit_png(path: Path, card: dict, index: int = 0) -> Path:
    """One of scikit-learn's digits as a PNG of the model's image size (raw 0..16 -> pixels 0..255)."""
    from sklearn.datasets import load_digits

    spec = card["image"]
    pixels = np.rint(load_digits().images[index] * (255.0 / spec["max_value"])).astype(np.uint8)
    image = Image.fromarray(pixels)
    if image.size != (spec["width"], spec["height"]):
        image = image.resize((spec["width"], spec["height"]))
    image.save(path)
    return path


def test_page_scores_an_uploaded_digit(browser, served_digits, tmp_path):
    from selenium.webdriver.common.by import By

    card = httpx.get(f"{served_digits}/v1/model").json()
    digit = _digit_png(tmp_path / "digit.png", card)
    browser.get(f"{served_digits}/")

    threshold = _wait(browser, '#card-fields dd[data-field="threshold"]')
    assert _value(threshold) == card["threshold"]
    assert threshold.text.startswith(f"{card['threshold']:.4g}")
    assert _wait(browser, '#card-fields dd[data-field="latent_dim"]').text == str(card["latent_dim"])
    _wait(browser, '#picture-list figure[data-picture="curves.png"] img', _loaded_image)

    browser.find_element(By.ID, "file-input").send_keys(str(digit))
    result = _wait(browser, '.result[data-file="digit.png"]', lambda e: e.get_attribute("data-state") != "pending")
    assert result.get_attribute("data-state") == "done", result.text
    score = result.find_element(By.CSS_SELECTOR, 'dd[data-field="anomaly_score"]')
    p_value = result.find_element(By.CSS_SELECTOR, 'dd[data-field="p_value"]')
    for role in ("original", "reconstruction"):
        _wait(browser, f'.result[data-file="digit.png"] img[data-image="{role}"]', _loaded_image)
    _wait(browser, '.result[data-file="digit.png"] canvas[data-image="heatmap"]')

    # The page sent the form's seed and n_samples: the same upload straight to /elbo gives the same numbers.
    seed = browser.find_element(By.ID, "opt-seed").get_attribute("value")
    n_samples = browser.find_element(By.ID, "opt-n-samples").get_attribute("value")
    direct = httpx.post(
        f"{served_digits}/elbo",
        files=[("files", ("digit.png", digit.read_bytes(), "image/png"))],
        data={"seed": seed, "n_samples": n_samples},
    ).json()
    assert _value(score) == direct["anomaly_score"][0]
    assert _value(p_value) == direct["p_value"][0]
    assert float(score.text) == pytest.approx(direct["anomaly_score"][0], rel=1e-3)
    verdict = result.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-value") == str(direct["is_anomaly"][0]).lower()
    assert f"threshold {card['threshold']:.4g}" in verdict.text

    # The same image dropped on the drop zone: a second card with the same numbers.
    browser.execute_script(
        DROP, "dropped.png", base64.b64encode(digit.read_bytes()).decode(), browser.find_element(By.ID, "drop-zone")
    )
    dropped = _wait(browser, '.result[data-file="dropped.png"]', lambda e: e.get_attribute("data-state") == "done")
    assert _value(dropped.find_element(By.CSS_SELECTOR, 'dd[data-field="anomaly_score"]')) == _value(score)

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    _assert_not_blank(screenshot.read_bytes(), min_colours=50)
    _assert_no_script_errors(browser)


def test_page_shows_the_servers_error_for_a_bad_image(browser, served_digits, tmp_path):
    from selenium.webdriver.common.by import By

    wrong = tmp_path / "wrong-size.png"
    Image.new("L", (5, 3), 128).save(wrong)
    browser.get(f"{served_digits}/")
    _wait(browser, '#card-fields dd[data-field="threshold"]')
    browser.find_element(By.ID, "file-input").send_keys(str(wrong))
    result = _wait(browser, '.result[data-file="wrong-size.png"]', lambda e: e.get_attribute("data-state") != "pending")
    assert result.get_attribute("data-state") == "error"
    direct = httpx.post(f"{served_digits}/elbo", files=[("files", ("wrong-size.png", wrong.read_bytes(), "image/png"))])
    assert direct.status_code == 422
    error = result.find_element(By.CSS_SELECTOR, ".error")
    assert error.text == f"422: {direct.json()['error']}"


def test_page_scores_a_pasted_csv_row(browser, tabular_model_dir, tabular_csv, tmp_path):
    from selenium.webdriver.common.by import By

    server, base = start_server(tabular_model_dir, "--host", "127.0.0.1", env={"VAE_API_KEY": "s3cret"})
    try:
        browser.get(f"{base}/")
        _wait(browser, "#page-error", lambda e: e.is_displayed() and "401" in e.text)
        browser.find_element(By.ID, "api-key").send_keys("s3cret")
        browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        _wait(browser, '#card-fields dd[data-field="threshold"]')
        labels = browser.find_elements(By.CSS_SELECTOR, "#row-fields label")
        # The fields carry the CSV's column names, which training kept in the manifest.
        assert [label.text for label in labels] == ["a", "b", "c", "d", "e", "constant"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#row-fields input")) == 6
        assert not browser.find_element(By.ID, "image-input").is_displayed()

        lines = tabular_csv.read_text().splitlines()
        browser.find_element(By.ID, "csv-text").send_keys(lines[0] + "\n" + lines[1])
        browser.find_element(By.CSS_SELECTOR, "#csv-form button").click()
        row = _wait(browser, "#table-results tbody tr")
        auth = {"authorization": "Bearer s3cret"}
        instance = [float(v) for v in lines[1].split(",")]
        # The form's n_samples: the model's calibrated L, so the page's decisions are the default ones.
        n_samples = int(browser.find_element(By.ID, "opt-n-samples").get_attribute("value"))
        assert n_samples == httpx.get(f"{base}/v1/model", headers=auth).json()["scoring"]["n_samples"]
        direct = httpx.post(
            f"{base}/elbo", json={"instances": [instance], "seed": 0, "n_samples": n_samples}, headers=auth
        ).json()
        cell = lambda name: row.find_element(By.CSS_SELECTOR, f'td[data-field="{name}"]')  # noqa: E731
        assert _value(cell("elbo")) == direct["elbo"][0]
        assert _value(cell("anomaly_score")) == direct["anomaly_score"][0]
        assert _value(cell("p_value")) == direct["p_value"][0]
        assert _value(cell("threshold")) == direct["threshold"]
        assert cell("is_anomaly").get_attribute("data-value") == str(direct["is_anomaly"][0]).lower()

        # A field that is not a number is named by its column.
        field = browser.find_element(By.CSS_SELECTOR, '#row-fields input[data-feature="1"]')
        field.clear()
        field.send_keys("many")
        browser.find_element(By.CSS_SELECTOR, "#row-form button[type=submit]").click()
        assert _wait(browser, "#table-error", lambda e: e.is_displayed()).text == 'b: "many" is not a finite number'

        # A row of the wrong width: the server's message, on the page.
        text = browser.find_element(By.ID, "csv-text")
        text.clear()
        text.send_keys("1,2,3")
        browser.find_element(By.CSS_SELECTOR, "#csv-form button").click()
        error = _wait(browser, "#table-error", lambda e: e.is_displayed())
        wrong = httpx.post(f"{base}/elbo", json={"instances": [[1, 2, 3]], "seed": 0, "n_samples": 8}, headers=auth)
        assert error.text == f"{wrong.status_code}: {wrong.json()['error']}"
        assert browser.execute_script("return sessionStorage.getItem('vae-api-key')") == "s3cret"

        screenshot = tmp_path / "tabular.png"
        assert browser.save_screenshot(str(screenshot))
        _assert_not_blank(screenshot.read_bytes(), min_colours=20)
        _assert_no_script_errors(browser)
    finally:
        stop(server)


def test_page_says_why_the_false_alarm_rate_is_not_the_default(browser, tmp_path):
    """A 50-row table: the calibration split supports no rate below 1/13, and L is chosen from the data."""
    from selenium.webdriver.common.by import By

    from tests.helpers import write_tabular_csv
    from training.train import TrainConfig, train

    data = write_tabular_csv(tmp_path / "small.csv", n=50)
    train(TrainConfig(data=str(data), out=str(tmp_path / "m"), hidden=[16], latent_dim=2, epochs=30, progress=False))
    server, base = start_server(tmp_path / "m", "--host", "127.0.0.1")
    try:
        card = httpx.get(f"{base}/v1/model").json()
        calibration = card["scoring"]["calibration"]
        assert calibration["fpr"] == pytest.approx(1 / 13) and calibration["fpr_note"].startswith("false-alarm rate")
        browser.get(f"{base}/")
        fpr = _wait(browser, '#card-fields dd[data-field="fpr"]')
        assert fpr.text == f"{calibration['fpr']:.4g} ({calibration['fpr_note']})"
        # An MLP scores by the ELBO, with L chosen from the data; the form sends that L.
        assert card["scoring"]["estimator"] == "elbo"
        assert _wait(browser, '#card-fields dd[data-field="estimator"]').text == "−elbo (ELBO_L)"
        draws = _wait(browser, '#card-fields dd[data-field="n_samples"]')
        assert draws.text.startswith(f"{card['scoring']['n_samples']} (chosen: score noise ")
        assert browser.find_element(By.ID, "opt-n-samples").get_attribute("value") == str(card["scoring"]["n_samples"])
        _assert_no_script_errors(browser)
    finally:
        stop(server)


HEATMAP_PIXELS = """
const canvas = arguments[0];
return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
"""


def _upload(browser, path: Path):
    """Choose a file on the page and wait until its card is scored; the card."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file-input").send_keys(str(path))
    result = _wait(browser, f'.result[data-file="{path.name}"]', lambda e: e.get_attribute("data-state") != "pending")
    assert result.get_attribute("data-state") == "done", result.text
    return result


def test_heatmaps_share_one_scale_with_a_legend_in_nats(browser, served_digits, tmp_path):
    from selenium.webdriver.common.by import By

    from service.core.images import heat_colours

    card = httpx.get(f"{served_digits}/v1/model").json()
    browser.get(f"{served_digits}/")
    _wait(browser, '#card-fields dd[data-field="threshold"]')
    assert not browser.find_element(By.ID, "heat-legend").is_displayed()  # nothing scored yet
    seed = browser.find_element(By.ID, "opt-seed").get_attribute("value")
    n_samples = browser.find_element(By.ID, "opt-n-samples").get_attribute("value")

    scores = {}
    for index in (0, 1, 7):
        digit = _digit_png(tmp_path / f"digit{index}.png", card, index)
        result = _upload(browser, digit)
        direct = httpx.post(
            f"{served_digits}/elbo",
            files=[("files", (digit.name, digit.read_bytes(), "image/png"))],
            data={"seed": seed, "n_samples": n_samples, "feature_scores": "true"},
        ).json()
        scores[digit.name] = (result, np.asarray(direct["feature_scores"][0]).sum(axis=0))  # (H, W) nats
    top = max(float(s.max()) for _, s in scores.values())
    legend = browser.find_element(By.ID, "heat-legend")
    assert legend.is_displayed()
    assert float(legend.get_attribute("data-max")) == top
    assert legend.find_element(By.CSS_SELECTOR, '[data-legend="max"]').text == f"{float(f'{top:.4g}'):g} nats"
    assert legend.find_element(By.CSS_SELECTOR, '[data-legend="min"]').text == "0"

    # Every heatmap is drawn on the shared scale, the earlier ones redrawn when a later image raised it: each
    # pixel is the ramp's colour of its score / top, so only the image holding the top has the brightest colour.
    brightest = []
    for name, (result, pixel_scores) in scores.items():
        canvas = result.find_element(By.CSS_SELECTOR, 'canvas[data-image="heatmap"]')
        rgba = np.asarray(browser.execute_script(HEATMAP_PIXELS, canvas)).reshape(*pixel_scores.shape, 4)
        expected = heat_colours(np.maximum(pixel_scores, 0) / top)
        assert np.abs(rgba[..., :3] - expected).max() <= 0.5 + 1e-9, name
        brightest.append(bool(np.all(rgba == [252, 255, 164, 255], axis=-1).any()))
    assert sorted(brightest) == [False, False, True]
    _assert_no_script_errors(browser)


def test_page_fits_a_phone_screen(browser, served_digits, tmp_path):
    """At 390 x 844 CSS pixels (a phone), after scoring an image: nothing is wider than the screen, so the page
    never scrolls sideways and the header band is whole."""
    card = httpx.get(f"{served_digits}/v1/model").json()
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
    )
    try:
        browser.get(f"{served_digits}/")
        _wait(browser, '#card-fields dd[data-field="threshold"]')
        _wait(browser, '#picture-list figure[data-picture="curves.png"] img', _loaded_image)
        _upload(browser, _digit_png(tmp_path / "phone.png", card))
        widths = browser.execute_script(
            "const header = document.querySelector('header');"
            "return [window.innerWidth, document.documentElement.scrollWidth, header.scrollWidth,"
            " header.getBoundingClientRect().right]"
        )
        assert widths == [390, 390, 390, 390]
        wider = browser.execute_script(
            "return [...document.querySelectorAll('body *')]"
            ".filter((e) => e.getBoundingClientRect().right > 390.5)"
            ".map((e) => `${e.tagName}#${e.id}.${e.className}`)"
        )
        assert wider == []
        screenshot = tmp_path / "phone-screen.png"
        assert browser.save_screenshot(str(screenshot))
        _assert_not_blank(screenshot.read_bytes(), min_colours=50)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
