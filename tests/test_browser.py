"""The page as a person uses it: a real Gradio server on 127.0.0.1, driven by headless Chromium.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver);
`python launch.py --test` installs them. A missing browser FAILS these tests (it is never a skip),
and no tool may download a browser or driver: selenium is given both paths, so selenium-manager
never runs.
"""

import json
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1366,768")  # the laptop screen
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


def open_tab(driver, name):
    """Turn the Advanced switch on (once) and pick the tab ``name`` of its column."""
    column = driver.find_elements("css selector", "#advanced-column")
    if not column or not column[0].is_displayed():
        find(driver, "#advanced input").click()
        find(driver, "#advanced-column")
    shown = [b for b in driver.find_elements("css selector", f"#tab-{name}-button") if b.is_displayed()]
    if shown:
        shown[0].click()
    else:  # a narrow column puts the last tabs in Gradio's "More tabs" menu
        find(driver, '#advanced-tabs button[aria-label="More tabs"]').click()
        label = name.replace("-", " ").capitalize()
        find(driver, "#advanced-tabs .overflow-dropdown button")
        [b for b in driver.find_elements("css selector", "#advanced-tabs .overflow-dropdown button")
         if b.text.strip() == label][0].click()
    find(driver, f"#tab-{name}")


def upload(driver, css, path):
    """Give a gr.File its file as a person dropping it would (the hidden file input takes the path)."""
    field = driver.find_element("css selector", f"{css} input[type=file]")
    field.send_keys(str(path))


def saved_pngs(config):
    return {p.name for p in config.output_dir.glob("*.png")}


def make_image(config, seed, steps=3, prompt="a red cube"):
    """A studio image of the tiny model saved in the output folder (as a run of the app would)."""
    from studio.service import Studio
    from studio.settings import build_request

    studio = Studio(config)
    plan = studio.plan(build_request(prompt=prompt, seed=seed, steps=steps, sampler="euler", width=64, height=64,
                                     model="tiny"))
    return Path(studio.run_job(plan).saved[0]["path"])


# --- tests -------------------------------------------------------------------------------------------------


def test_generate_stop_and_skip_are_visible_without_scrolling(page, tmp_path):
    """At 1366×768 (a common laptop), the gallery, the prompt and its buttons are all in view on load."""
    height = page.execute_script("return window.innerHeight")
    assert height <= 768
    for css in ("#gallery", "#prompt textarea", "#generate", "#stop", "#skip"):
        rect = page.execute_script("return arguments[0].getBoundingClientRect().bottom", find(page, css))
        assert 0 < rect <= height, f"{css} ends at {rect}px, below the {height}px window"
    assert page.execute_script("return window.scrollY") == 0
    assert not find(page, "#advanced input").is_selected()  # the Advanced column starts closed
    assert page.save_screenshot(str(tmp_path / "loaded.png"))


def test_page_loads_with_the_untrained_model_note(page):
    open_tab(page, "model")
    note = find(page, "#model-note")
    assert "untrained (random) weights" in note.text and "tiny" in note.text
    assert find(page, "#token-counter").text.strip() == "0/75"
    open_tab(page, "setting")
    assert find(page, "#width input").get_attribute("value") == "64"
    assert find(page, "#height input").get_attribute("value") == "64"


def test_long_prompt_updates_the_token_counter(page):
    prompt = find(page, "#prompt textarea")
    prompt.send_keys(" ".join(["cat"] * 80))
    wait_text(page, "#token-counter", "80/150 · 2 chunks")


def test_plan_shows_risks_before_generate(page):
    assert "No reproducibility risks" in wait_text(page, "#plan", "No reproducibility risks")
    assert text_of(page, "#error").strip() == ""
    open_tab(page, "advanced")
    find(page, '#vae-dtype input[value="bf16"]').click()
    plan = wait_text(page, "#plan", "vae_not_fp32")
    assert "No reproducibility risks" not in plan
    assert "Advanced › VAE precision: fp32" in plan and "--dtype vae=fp32" in plan  # the app's control and the flag
    assert text_of(page, "#info").strip() == "" and not page.find_elements("css selector", "#gallery img")


def test_ctrl_enter_generates_and_saves_seed_42(page, config, tmp_path):
    from selenium.webdriver.common.keys import Keys

    open_tab(page, "setting")
    fill(page, "#seed input", 42)
    fill(page, 'input[aria-label="number input for Steps"]', 3)
    wait_text(page, "#plan", "42 ·")  # the preview has the new seed: the server holds our values
    before = saved_pngs(config)
    prompt = find(page, "#prompt textarea")
    prompt.send_keys("a lighthouse", Keys.CONTROL, Keys.ENTER)
    info = wait_text(page, "#info", "42 ·", timeout=GENERATE_WAIT_S)
    wait(page).until(lambda d: any(img.get_property("naturalWidth") > 0
                                   for img in d.find_elements("css selector", "#gallery img")),
                     message="the gallery shows no image")
    assert text_of(page, "#error").strip() == ""
    new = sorted(saved_pngs(config) - before)
    assert len(new) == 1 and new[0].endswith("_42.png"), (new, info)
    assert find(page, "#seed input").get_attribute("value") == "42"  # fixed mode keeps the seed
    assert "42" in wait_text(page, "#last-run", "42")  # the seed-lock panel records the run
    assert page.save_screenshot(str(tmp_path / "generated.png"))


def test_live_preview_appears_while_it_runs(page):
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 60)
    press_generate(page)
    wait(page, GENERATE_WAIT_S).until(
        lambda d: any(img.get_property("naturalWidth") > 0
                      for img in d.find_elements("css selector", "#live-preview img")),
        message="no live preview appeared during the run")
    assert "step" in wait_text(page, "#status", "step")
    wait_text(page, "#status", "done", timeout=GENERATE_WAIT_S)


def queue_calls(driver) -> int:
    """How many events this page has sent to the server since count_queue_calls."""
    return driver.execute_script("return window.__queueCalls")


def count_queue_calls(driver) -> None:
    driver.execute_script("""
      window.__queueCalls = 0;
      new PerformanceObserver(list => {
        window.__queueCalls += list.getEntries().filter(e => e.name.includes('/queue/join')).length;
      }).observe({type: 'resource'});""")


def test_edits_to_the_controls_settle_and_the_page_goes_quiet(page):
    """Each edit sends its few events and then the page is idle: Gradio 6 re-fires a Slider's change without
    end when it has two change listeners, and that loop of plan previews took the CPU and wiped the page's
    messages."""
    import time

    count_queue_calls(page)
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 60)  # also moves the performance radio
    find(page, '#performance input[value="Speed"]').click()  # sets the steps back
    fill(page, "#width input", 96)
    fill(page, 'input[aria-label="number input for Image number"]', 2)
    deadline, last, quiet_since = time.monotonic() + WAIT_S, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = queue_calls(page)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 3:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the page never went quiet: {queue_calls(page)} events sent in {WAIT_S} s after four edits")
    assert 0 < last < 40, f"{last} events for four edits"
    wait_text(page, "#plan", "96×64")


def test_stop_mid_run_writes_nothing_and_the_next_run_works(page, config):
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 150)
    # 2,400 steps at 128 px (a fraction of a second each): Stop lands mid-run, and the run ends soon after it.
    fill(page, 'input[aria-label="number input for Image number"]', 16)
    fill(page, "#width input", 128)
    fill(page, "#height input", 128)
    fill(page, "#seed input", 7)
    before = saved_pngs(config)
    press_generate(page)
    import time
    started = time.monotonic()
    wait_text(page, "#status", "step", timeout=GENERATE_WAIT_S)
    print(f"[stop] the page showed the first step {time.monotonic() - started:.1f} s after Generate")
    find(page, "#stop").click()
    # The page says at once that the click landed ("stopping after the step in progress"), unless the job's
    # next step came first and the page went straight to the error: either shows the click was taken.
    wait(page).until(lambda d: "stopping after the step in progress" in text_of(d, "#status")
                     or "stopped" in text_of(d, "#error"),
                     message=f"the Stop click was not taken: #status shows {text_of(page, '#status')!r}")
    from selenium.common.exceptions import TimeoutException

    try:
        wait(page, GENERATE_WAIT_S).until(lambda d: "stopped" in text_of(d, "#error"))
    except TimeoutException:  # say whether the run went on stepping or hung
        pytest.fail(f"#error never showed 'stopped' ({text_of(page, '#error')!r}); #status shows "
                    f"{text_of(page, '#status')!r}")
    error = text_of(page, "#error")
    assert "nothing was saved" in error
    assert saved_pngs(config) == before
    fill(page, 'input[aria-label="number input for Steps"]', 2)
    fill(page, 'input[aria-label="number input for Image number"]', 1)
    fill(page, "#width input", 64)
    fill(page, "#height input", 64)
    press_generate(page)
    wait_text(page, "#info", "7 ·", timeout=GENERATE_WAIT_S)
    assert len(saved_pngs(config) - before) == 1


def test_a_style_is_applied_and_shown_in_the_plan(page):
    open_tab(page, "style")
    find(page, "#styles input").click()
    option = find(page, '#styles li[role="option"]')
    name = option.get_attribute("aria-label")
    option.click()
    plan = wait_text(page, "#plan", "Styles:")
    assert name in plan and "encoded prompt:" in plan
    assert name in wait_text(page, "#style-info", name)


def test_an_aspect_ratio_sets_the_size(page):
    open_tab(page, "setting")
    choose(page, "#aspect-ratio", "96×64")
    wait(page).until(lambda d: find(d, "#width input").get_attribute("value") == "96")
    assert find(page, "#height input").get_attribute("value") == "64"
    wait_text(page, "#plan", "96×64")


def test_an_image_dropped_on_image_info_is_applied(page, config):
    image = make_image(config, seed=777, steps=3, prompt="a blue teapot")
    open_tab(page, "image-info")
    upload(page, "#info-image", image)
    shown = wait_text(page, "#image-info", "777")
    assert "a blue teapot" in shown and "studio" in shown
    wait_text(page, "#image-report", "expected")
    find(page, "#info-apply").click()
    wait(page).until(lambda d: find(d, "#prompt textarea").get_attribute("value") == "a blue teapot")
    open_tab(page, "setting")
    assert find(page, "#seed input").get_attribute("value") == "777"
    assert find(page, 'input[aria-label="number input for Steps"]').get_attribute("value") == "3"
    wait_text(page, "#plan", "777 ·")


def test_verify_runs_twice_and_shows_a_verdict(page):
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 2)
    fill(page, "#seed input", 11)
    open_tab(page, "verify")
    find(page, '#verify-how input[value="Run twice"]').click()
    find(page, "#verify-run").click()
    verdict = wait_text(page, "#verify-verdict", "identical", timeout=GENERATE_WAIT_S)
    assert "two runs of torch on cpu" in verdict and "PSNR" in verdict
    wait(page).until(lambda d: any(img.get_property("naturalWidth") > 0
                                   for img in d.find_elements("css selector", "#verify-heatmap img")),
                     message="no heatmap")


def test_bad_width_is_a_visible_error(page):
    open_tab(page, "setting")
    fill(page, "#width input", 65)
    press_generate(page)
    error = wait_text(page, "#error", "multiple of 8", timeout=GENERATE_WAIT_S)
    assert "65" in error
    assert find(page, "#error .studio-error").is_displayed()


def test_closing_the_tab_removes_the_gallery_copies(page, config):
    import time

    from gradio.utils import get_upload_folder

    open_tab(page, "setting")
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

    open_tab(page, "setting")
    before = saved_pngs(config)
    for typed in ("", "-"):
        field = find(page, "#width input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(typed, Keys.TAB)
        wait_text(page, "#error", "Width is empty: type a multiple of 8")
        press_generate(page)
        wait_text(page, "#error", "Width is empty")
    assert saved_pngs(config) == before
    assert not [t for t in page.find_elements("css selector", ".toast-body") if t.text.strip()]


def test_the_plan_is_made_again_after_a_run(page):
    open_tab(page, "advanced")
    find(page, '#backend input[value="openvino"]').click()
    wait(page).until(lambda d: find(d, "#device input").get_attribute("value") == "CPU")  # OpenVINO's devices
    wait_text(page, "#compile-cache-info", "Next run compiles")
    open_tab(page, "setting")
    fill(page, "#seed input", 9)
    fill(page, 'input[aria-label="number input for Steps"]', 2)
    wait_text(page, "#plan", "Will compile")
    press_generate(page)
    wait_text(page, "#info", "9 ·", timeout=GENERATE_WAIT_S)
    wait_text(page, "#plan", "Compiled variant cached", timeout=GENERATE_WAIT_S)
    assert "Will compile" not in text_of(page, "#plan")
    open_tab(page, "advanced")
    wait_text(page, "#compile-cache-info", "Next run uses")


def test_history_lists_a_run_after_a_restart(driver, config, tmp_path):
    """Images saved before the server started (a restart) are in the History tab, with Apply."""
    from conftest import free_port
    from studio.ui.app import build_app
    from studio.ui.server import launch

    image = make_image(config, seed=31337, steps=2, prompt="a green lantern")
    app = build_app(config, model="tiny")  # a new server on the same output folder
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_text(driver, "#plan", "Will run", timeout=60)
        open_tab(driver, "history")
        wait(driver).until(lambda d: d.find_elements("css selector", "#history-gallery img"),
                           message="the History tab lists nothing")
        find(driver, "#history-gallery img").click()  # the newest first: the image made above
        shown = wait_text(driver, "#history-info", "31337")
        assert "a green lantern" in shown and image.name in shown
        find(driver, "#history-apply").click()
        wait(driver).until(lambda d: find(d, "#prompt textarea").get_attribute("value") == "a green lantern")
        assert driver.save_screenshot(str(tmp_path / "history.png"))
    finally:
        app.close()


# --- image input -------------------------------------------------------------------------------------------


def _pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _generate_one(driver, config) -> Path:
    """Press Generate and wait for the one new image it saves (the status may still say the last run's "done")."""
    before = saved_pngs(config)
    press_generate(driver)
    wait(driver, GENERATE_WAIT_S).until(lambda d: saved_pngs(config) - before or "error" in text_of(d, "#error"),
                                        message="no image was saved")
    assert text_of(driver, "#error").strip() == ""
    new = sorted(saved_pngs(config) - before)
    assert len(new) == 1
    return config.output_dir / new[0]


def _drop_url(driver, css, url):
    """Drop ``url`` on ``css`` as a browser does when a page's <img> is dragged there (a URL, no file)."""
    driver.execute_script("""
        const files = new DataTransfer();
        files.setData('text/uri-list', arguments[1]);
        document.querySelector(arguments[0]).dispatchEvent(
            new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true}));""", css, url)


def test_a_gallery_image_dragged_into_input_image_varies(page, config):
    """Generate, drag the result from the gallery into Upscale or Variation, and Vary (Subtle) it."""
    from studio.image_input import pixel_sha256, read_image
    from studio.service import read_image_settings

    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 4)
    source = _generate_one(page, config)
    find(page, "#input-switch input").click()
    find(page, "#uov-image")
    url = find(page, "#gallery img").get_attribute("src")
    _drop_url(page, "#uov-image", url)
    sha = pixel_sha256(read_image(source)[0])
    wait_text(page, "#plan", f"vary-subtle of input {sha[:12]}")
    wait_text(page, "#plan", "runs 2 of 4 steps")
    varied = _generate_one(page, config)
    record = read_image_settings(varied)["request"]["image"]
    assert record["mode"] == "vary-subtle" and record["sha256"] == sha
    a, b = _pixels(source), _pixels(varied)
    assert a.shape == b.shape and 0 < abs(a - b).mean()  # the same size, and varied


def test_painting_a_mask_inpaints_only_there(page, config, tmp_path):
    """Inpaint: paint a stroke on the image with the editor's brush; only pixels near it change."""
    from selenium.webdriver.common.action_chains import ActionChains

    from tests.conftest import make_picture

    picture = tmp_path / "picture.png"
    make_picture(64, 64).save(picture)
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 4)
    find(page, "#input-switch input").click()
    find(page, "#image-mode input[value='inpaint']").click()
    editor = find(page, "#inpaint-image")
    upload(page, "#inpaint-image", picture)
    page.execute_script("arguments[0].scrollIntoView()", editor)
    find(page, "#inpaint-image button[aria-label='Brush']").click()
    canvas = [c for c in page.find_elements("css selector", "#inpaint-image canvas") if c.is_displayed()][0]
    ActionChains(page).move_to_element(canvas).click_and_hold().move_by_offset(20, 0).release().perform()
    wait_text(page, "#plan", "inpaint of input")
    wait_text(page, "#plan", "mask ")
    painted = _generate_one(page, config)
    import numpy as np

    changed = np.abs(_pixels(painted) - _pixels(picture)).max(axis=2) > 1
    assert changed.any(), "nothing was repainted"
    rows, cols = np.nonzero(changed)
    # the stroke is short and horizontal through the middle: the top and bottom rows are the input's own
    assert changed[:8].sum() == 0 and changed[-8:].sum() == 0, (rows.min(), rows.max(), cols.min(), cols.max())


def test_the_render_farm_tab_renders_seeds_and_follows_them(page, config):
    open_tab(page, "setting")
    fill(page, 'input[aria-label="number input for Steps"]', 2)
    fill(page, "#seed input", 500)
    open_tab(page, "render-farm")
    fill(page, "#farm-seeds input", 3)
    find(page, "#farm-start").click()
    shown = wait_text(page, "#farm-progress", "images rendered", timeout=GENERATE_WAIT_S * 2)
    assert "3 images rendered" in shown and "w1" in shown and "identical" in shown
    folders = list((config.output_dir / "renders").glob("tiny-*-seed500x3"))
    assert len(folders) == 1
    lines = (folders[0] / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["seed"] for line in lines) == [500, 501, 502]
