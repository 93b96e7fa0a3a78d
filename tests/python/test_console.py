"""The web console in a real headless browser (Debian's Chromium driven by Selenium) against
`dds-gateway serve --sandbox` with callers configured: sign in, the fleet chart, an instance's
page, a refused action's reason, then a rollout planned, started, watched live, paused, resumed
and approved with a comment that shows in the activity list.

Screenshots of each step go to target/console-screenshots/ (artifacts, not committed).
"""

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, running_gateway

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO_ROOT / "target" / "console-screenshots"

OPS_TOKEN = "console-ops-token-0123456789"
VIEWER_TOKEN = "console-viewer-token-0123456789"


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


CALLERS = f"""
[[callers]]
name = "ops"
token_sha256 = "{sha256(OPS_TOKEN)}"
regions = ["cn-hangzhou", "cn-shenzhen"]
instances = ["dds-*"]
rollouts = true

[[callers]]
name = "viewer"
token_sha256 = "{sha256(VIEWER_TOKEN)}"
regions = ["cn-hangzhou"]
instances = ["dds-*"]
validate_only = true
"""


@pytest.fixture(scope="module")
def console(gateway_bin, tmp_path_factory):
    """The gateway (sandbox, console on by default there) with two callers; its /ui/ URL."""
    config = tmp_path_factory.mktemp("console") / "gateway.toml"
    config.write_text(CALLERS)
    with running_gateway(gateway_bin, "--config", str(config)) as local:
        yield f"http://{local}/ui/"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the console tests need /usr/bin/chromium and /usr/bin/chromedriver "
                    "(Debian packages chromium and chromium-driver)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name):
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def wait_for(driver, condition, what, timeout=20):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        shot(driver, f"timeout-{what.replace(' ', '-')}")
        logs = "\n".join(str(e) for e in driver.get_log("browser"))
        pytest.fail(f"timed out waiting for {what}; page text:\n{text(driver)}\nconsole log:\n{logs}")


def text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def has_text(css, needle):
    def check(driver):
        found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if needle in e.text]
        return found[0] if found else False
    return check


def sign_in(driver, console, token):
    driver.get(console)
    driver.execute_script("sessionStorage.clear()")
    driver.get(console)
    field = wait_for(driver, EC.element_to_be_clickable((By.ID, "token")), "the sign-in form")
    field.send_keys(token)
    driver.find_element(By.ID, "signin-button").click()


def confirm(driver, comment=None):
    dialog = wait_for(driver, EC.visibility_of_element_located((By.ID, "confirm")), "the confirmation")
    if comment is not None:
        dialog.find_element(By.ID, "confirm-comment-text").send_keys(comment)
    dialog.find_element(By.ID, "confirm-ok").click()
    wait_for(driver, EC.invisibility_of_element_located((By.ID, "confirm")), "the dialog to close")


def test_an_unknown_token_is_refused_with_its_reason_and_never_stored_elsewhere(browser, console):
    sign_in(browser, console, "not-a-known-token-000000")
    alert = wait_for(browser, has_text("[role=alert]", "refused"), "the refusal")
    assert "CALLER_" in alert.text, alert.text
    shot(browser, "01-sign-in-refused")
    # The token lives in this tab's sessionStorage only: no cookie, nothing in the URL.
    assert browser.get_cookies() == []
    assert "token" not in browser.current_url
    assert browser.execute_script("return localStorage.length") == 0


def test_sign_in_and_see_the_fleet_chart(browser, console):
    sign_in(browser, console, OPS_TOKEN)
    wait_for(browser, has_text("#who", "Signed in as ops"), "the caller's name")
    chart = wait_for(browser, EC.presence_of_element_located((By.ID, "fleet-chart")), "the fleet chart")
    bars = chart.find_elements(By.CSS_SELECTOR, "g.bar")
    assert bars, "the chart has no bars"
    labels = chart.text
    # Versions past their end of life say so in words, not by colour alone.
    assert "past end of life" in labels, labels
    assert browser.find_elements(By.CSS_SELECTOR, "g.bar.bad")
    # The instance table links to each instance's page.
    links = browser.find_elements(By.CSS_SELECTOR, "a[href^='#/instances/']")
    assert links
    shot(browser, "02-fleet")
    assert browser.get_cookies() == []


def test_filters_and_an_instance_page(browser, console):
    sign_in(browser, console, OPS_TOKEN)
    wait_for(browser, EC.presence_of_element_located((By.ID, "fleet-chart")), "the fleet chart")
    version = browser.find_element(By.ID, "filter-version")
    options = [o.get_attribute("value") for o in version.find_elements(By.TAG_NAME, "option")]
    chosen = options[1]
    version.send_keys(chosen)
    def filtered(d):
        rows = d.find_elements(By.XPATH, "(//table)[last()]/tbody/tr")
        return rows and all(chosen in row.find_elements(By.TAG_NAME, "td")[2].text for row in rows)
    wait_for(browser, filtered, "the filter")
    link = browser.find_element(By.CSS_SELECTOR, "a[href^='#/instances/']")
    instance = link.text
    link.click()
    wait_for(browser, has_text("h2", f"Instance {instance}"), "the instance page")
    wait_for(browser, EC.presence_of_element_located((By.ID, "instance-version")), "its version")
    assert "Versions offered" in text(browser)
    shot(browser, "03-instance")


def test_a_refused_action_shows_the_reason_and_the_fields(browser, console):
    sign_in(browser, console, OPS_TOKEN)
    wait_for(browser, has_text("#who", "Signed in as ops"), "the caller's name")
    browser.get(console + "#/rollouts/new")
    wait_for(browser, EC.element_to_be_clickable((By.ID, "plan-preview-button")), "the plan form").click()
    alert = wait_for(browser, has_text("[role=alert]", "refused"), "the refusal")
    # The ErrorInfo reason and the BadRequest field violation, not a JSON dump.
    assert "selector" in alert.text, alert.text
    assert "{" not in alert.text, alert.text
    shot(browser, "04-refused")


def test_what_a_caller_may_not_do_is_not_offered(browser, console):
    sign_in(browser, console, VIEWER_TOKEN)
    wait_for(browser, has_text("#who", "Signed in as viewer"), "the caller's name")
    browser.get(console + "#/rollouts")
    wait_for(browser, has_text("h2", "Rollouts"), "the rollouts page")
    assert not browser.find_elements(By.ID, "plan-link")
    browser.get(console + "#/rollouts/new")
    wait_for(browser, has_text("main", "may not start rollouts"), "the refusal to plan")


def test_a_rollout_planned_started_watched_paused_resumed_and_approved(browser, console):
    sign_in(browser, console, OPS_TOKEN)
    wait_for(browser, has_text("#who", "Signed in as ops"), "the caller's name")
    browser.get(console + "#/rollouts/new")
    wait_for(browser, EC.element_to_be_clickable((By.ID, "plan-preview-button")), "the plan form")
    browser.find_element(By.ID, "sel-regions").send_keys("cn-hangzhou")
    browser.find_element(By.ID, "sel-versions").send_keys("4.2")
    browser.find_element(By.ID, "sel-patterns").send_keys("dds-fleet*")
    browser.find_element(By.ID, "target").send_keys("4.4")
    browser.find_element(By.ID, "plan-preview-button").click()
    wait_for(browser, has_text("#plan-preview h3", "eligible"), "the preview")
    preview = browser.find_element(By.ID, "plan-preview").text
    assert "Excluded instances and why" in preview or "No instance is excluded" in preview
    shot(browser, "05-plan")

    waves = browser.find_element(By.ID, "waves")
    waves.clear()
    waves.send_keys("1, 100%")
    browser.find_element(By.ID, "approval").click()
    browser.find_element(By.ID, "start-comment").send_keys("console test: 4.2 is past its end of life")
    browser.find_element(By.ID, "start-button").click()
    confirm(browser)
    wait_for(browser, EC.presence_of_element_located((By.ID, "rollout-state")), "the rollout page")
    browser.execute_script("window.__same_page = true")

    # Pause, then resume: each confirmed, each reflected in the state.
    wait_for(browser, EC.element_to_be_clickable((By.ID, "rollout-pause")), "the pause button").click()
    confirm(browser)
    wait_for(browser, has_text("#rollout-state", "paused"), "the paused state")
    shot(browser, "06-paused")
    wait_for(browser, EC.element_to_be_clickable((By.ID, "rollout-resume")), "the resume button").click()
    confirm(browser)
    wait_for(browser, lambda d: "paused" not in d.find_element(By.ID, "rollout-state").text, "the resumed state")

    # The canary wave's progress changes without a reload.
    wait_for(browser, has_text("section.wave[data-wave='0'] .wave-count", "1 of 1 done"),
             "the canary wave to finish", timeout=120)
    assert browser.execute_script("return window.__same_page === true"), "the page was reloaded"
    shot(browser, "07-canary-done")

    # The approval gate, approved with a comment that then shows in the activity list.
    approve = wait_for(browser, EC.element_to_be_clickable((By.ID, "rollout-approve")), "the approval gate", timeout=60)
    assert "Waiting for an approval" in text(browser)
    shot(browser, "08-approval-gate")
    approve.click()
    confirm(browser, comment="canary looks healthy")
    wait_for(browser, has_text("section.wave[data-wave='1']", "Approved by ops"), "the approval")
    browser.get(console + "#/activity")
    row = wait_for(browser, has_text("tbody tr", "canary looks healthy"), "the approval in the activity")
    assert "ops" in row.text
    shot(browser, "09-activity")


def test_the_page_works_at_phone_width(browser, console):
    browser.set_window_size(390, 844)
    try:
        sign_in(browser, console, OPS_TOKEN)
        wait_for(browser, EC.presence_of_element_located((By.ID, "fleet-chart")), "the fleet chart")
        # Nothing wider than the screen but the scrollable tables.
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
        # Every control can be reached with the keyboard and has a label.
        unlabelled = browser.execute_script("""
            return [...document.querySelectorAll('input, select, textarea')]
              .filter((el) => !el.labels || el.labels.length === 0).map((el) => el.id);""")
        assert unlabelled == []
        shot(browser, "10-phone")
    finally:
        browser.set_window_size(1280, 1000)
