"""The reviewer web page in headless Chromium (Debian's, driven by
Playwright): a reviewer pastes a token, sees the held call and approves it,
and the waiting agent call completes. Also: hostile parameters render as
text, never as markup."""
import concurrent.futures
import time

import pytest
from botocore.config import Config as BotoConfig

import harness
from test_approvals import reviewer, start

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, veil, token):
    """The reviewer page with `token` pasted; returns the page and the list of JS dialogs seen."""
    page = browser.new_page(ignore_https_errors=True)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(veil.admin_url + "/")
    page.fill("#token", token)
    page.click("#use")
    return page, dialogs


def test_reviewer_approves_in_the_browser_and_the_agent_call_completes(tmp_path, issuer, moto, browser):
    veil, cfg, ca = start(tmp_path, issuer, moto, wait=30)
    try:
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="page-agent"), tmp_path) as s:
            client = s.client("iam", config=BotoConfig(retries={"max_attempts": 1}, read_timeout=60))
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                call = ex.submit(client.create_user, UserName="page-user")
                page, dialogs = open_page(browser, veil, reviewer(issuer))
                row = page.locator("tr", has_text="iam:CreateUser")
                row.wait_for(timeout=15000)
                assert "page-agent" in row.inner_text() and "page-user" in row.inner_text()
                row.locator("input.reason").fill("looks fine")
                row.locator("button.approve").click()
                assert call.result(timeout=30)["User"]["UserName"] == "page-user"
                page.wait_for_selector("#status >> text=Approved")
                assert dialogs == []
    finally:
        veil.stop()


def test_hostile_parameters_render_as_text(tmp_path, issuer, moto, browser):
    veil, cfg, ca = start(tmp_path, issuer, moto, wait=1)
    try:
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="evil-agent"), tmp_path) as s:
            client = s.client("iam", config=BotoConfig(retries={"max_attempts": 1}))
            try:
                client.create_user(UserName="x", Path="/<img src=x onerror=alert(1)>/")
            except Exception:
                pass
        page, dialogs = open_page(browser, veil, reviewer(issuer))
        row = page.locator("tr", has_text="evil-agent")
        row.wait_for(timeout=15000)
        assert "<img src=x onerror=alert(1)>" in row.inner_text()
        assert page.locator("img").count() == 0
        assert dialogs == []
        # A token that is not a reviewer's is refused, visibly.
        page.fill("#token", harness.mint(issuer, sub="dev", groups=["dev"]))
        page.click("#use")
        page.wait_for_selector("#status.error >> text=not a reviewer")
    finally:
        veil.stop()
