"""The page as a person uses it: a real Gradio server on 127.0.0.1, driven by headless Chromium.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver);
`python launch.py --test` installs them. A missing browser FAILS these tests (it is never a skip),
and no tool may download a browser or driver: selenium is given both paths, so selenium-manager
never runs.
"""

import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1600")
WAIT_S = 20  # page updates (token counter, plan preview, errors)
GENERATE_WAIT_S = 120


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"browser tests need {' and '.join(missing)}: run `python launch.py --test` (it installs "
                    "them as root on Debian) or `apt-get install -y chromium chromium-driver`", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"browser tests need selenium ({exc}): pip install -e '.[test]'", pytrace=False)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture
def page(driver, server):
    """A freshly loaded page (default control values) whose plan preview has arrived."""
    driver.get(server)
    wait_text(driver, "#plan", "Will run", timeout=60)
    return driver


# --- helpers -----------------------------------------------------------------------------------------------


def wait(driver, timeout=WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def find(driver, css, timeout=WAIT_S):
    """A visible element (Gradio renders lazily, so wait for it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)),
                                       message=f"no visible {css}")


def text_of(driver, css) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return " ".join(found[0].text.split()) if found else ""  # <code> spans break lines in .text


def wait_text(driver, css, needle, timeout=WAIT_S) -> str:
    """Wait until the element's visible text contains needle; return that text."""
    wait(driver, timeout).until(lambda d: needle in text_of(d, css),
                                message=f"{css} never showed {needle!r}; it shows {text_of(driver, css)!r}")
    return text_of(driver, css)


def fill(driver, css, value):
    """Replace an input's value the way a person does (select all, type), then leave the field."""
    from selenium.webdriver.common.keys import Keys

    field = find(driver, css)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))  # typing over the selection: never an empty field (None breaks Slider)
    field.send_keys(Keys.TAB)
    wait(driver).until(lambda d: field.get_attribute("value") == str(value),
                       message=f"{css} did not take {value!r}")


def choose(driver, css, option):
    """Pick an option of a Gradio dropdown."""
    find(driver, f"{css} input").click()
    find(driver, f'{css} li[role="option"][aria-label="{option}"]').click()
    wait(driver).until(lambda d: find(d, f"{css} input").get_attribute("value") == option,
                       message=f"{css} did not take {option!r}")


def press_generate(driver):
    find(driver, "#generate").click()


# --- tests -------------------------------------------------------------------------------------------------


def test_page_loads_with_the_untrained_model_note(page, tmp_path):
    note = find(page, "#model-note")
    assert "untrained (random) weights" in note.text
    assert "tiny" in note.text
    assert find(page, "#token-counter").text.strip() == "0/75"
    assert find(page, "#width input").get_attribute("value") == "64"
    assert find(page, "#height input").get_attribute("value") == "64"
    assert page.save_screenshot(str(tmp_path / "loaded.png"))


def test_long_prompt_updates_the_token_counter(page):
    prompt = find(page, "#prompt textarea")
    prompt.send_keys(" ".join(["cat"] * 80))
    wait_text(page, "#token-counter", "80/150 · 2 chunks")


def test_plan_shows_risks_before_generate(page):
    assert "No reproducibility risks" in wait_text(page, "#plan", "No reproducibility risks")
    find(page, "#error")
    assert text_of(page, "#error").strip() == ""
    find(page, "#precision button.label-wrap").click()  # the Precision accordion (closed by default)
    choose(page, "#vae-dtype", "bf16")
    plan = wait_text(page, "#plan", "vae_not_fp32")
    assert "No reproducibility risks" not in plan
    assert text_of(page, "#info").strip() == "" and not page.find_elements("css selector", "#gallery img")


def test_generate_seed_42_shows_and_saves_the_image(page, config, tmp_path):
    fill(page, "#seed input", 42)
    fill(page, 'input[aria-label="number input for Steps"]', 3)
    wait_text(page, "#plan", "42 ·")  # the preview has the new seed: the server holds our values
    assert find(page, "#width input").get_attribute("value") == "64"
    assert find(page, "#height input").get_attribute("value") == "64"
    before = {p.name for p in config.output_dir.glob("*.png")}
    press_generate(page)
    info = wait_text(page, "#info", "42 ·", timeout=GENERATE_WAIT_S)
    assert "<code>42</code>" in find(page, "#info").get_attribute("innerHTML")  # markdown of "`42`"
    wait(page).until(lambda d: any(img.get_property("naturalWidth") > 0
                                   for img in d.find_elements("css selector", "#gallery img")),
                     message="the gallery shows no image")
    assert text_of(page, "#error").strip() == ""
    new = sorted({p.name for p in config.output_dir.glob("*.png")} - before)
    assert any(name.endswith("_42.png") for name in new), (new, info)
    assert find(page, "#seed input").get_attribute("value") == "42"  # fixed mode keeps the seed
    assert page.save_screenshot(str(tmp_path / "generated.png"))


def test_bad_width_is_a_visible_error(page):
    fill(page, "#width input", 65)
    press_generate(page)
    error = wait_text(page, "#error", "multiple of 8", timeout=GENERATE_WAIT_S)
    assert "65" in error
    assert find(page, "#error .studio-error").is_displayed()


def test_closing_the_tab_removes_the_gallery_copies(page, config):
    import time

    from gradio.utils import get_upload_folder

    fill(page, "#seed input", 4242)
    wait_text(page, "#plan", "4242 ·")
    press_generate(page)
    wait_text(page, "#info", "4242 ·", timeout=GENERATE_WAIT_S)
    names = [p.name for p in config.output_dir.glob("*_4242.png")]
    copies = [c for name in names for c in Path(get_upload_folder()).glob(f"*/{name}")]
    assert copies, "the gallery shows a copy from Gradio's cache"
    page.get("about:blank")  # the session ends
    deadline = time.monotonic() + 60
    while any(c.exists() for c in copies) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(c.exists() for c in copies), "the closed session's gallery copies are still there"
    assert all((config.output_dir / name).exists() for name in names)  # the outputs themselves stay


def test_an_empty_width_is_a_clear_message(page, config):
    from selenium.webdriver.common.keys import Keys

    before = set(config.output_dir.glob("*.png"))
    for typed in ("", "-"):
        field = find(page, "#width input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(typed, Keys.TAB)
        wait_text(page, "#error", "Width is empty: type a multiple of 8")
        press_generate(page)
        wait_text(page, "#error", "Width is empty")
    assert set(config.output_dir.glob("*.png")) == before
    assert not [t for t in page.find_elements("css selector", ".toast-body") if t.text.strip()]


def test_the_plan_is_made_again_after_a_run(page):
    find(page, "#backend-settings button.label-wrap").click()
    find(page, '#backend input[value="openvino"]').click()
    fill(page, "#device textarea", "CPU")
    fill(page, "#seed input", 9)
    fill(page, 'input[aria-label="number input for Steps"]', 2)
    wait_text(page, "#plan", "Will compile")
    press_generate(page)
    wait_text(page, "#info", "9 ·", timeout=GENERATE_WAIT_S)
    wait_text(page, "#plan", "Compiled variant cached", timeout=GENERATE_WAIT_S)
    assert "Will compile" not in text_of(page, "#plan")
