"""Make the README's screenshots: the app on the tiny model at 1366×768, in headless Debian Chromium.

    HF_HUB_OFFLINE=1 .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from conftest import free_port
    from studio.settings import AppConfig
    from studio.ui.app import build_app
    from studio.ui.server import launch
    from test_browser import CHROMEDRIVER, CHROMIUM, fill, find, open_tab, press_generate, wait_text

    work = Path(tempfile.mkdtemp(prefix="studio-shots-"))
    app = build_app(AppConfig(output_dir=work / "out", models_dir=work / "models"), model="tiny")
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,768",
                 f"--user-data-dir={work / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_text(driver, "#plan", "Will run", timeout=60)
        find(driver, "#prompt textarea").send_keys("a lighthouse at dusk, oil painting")
        open_tab(driver, "setting")
        fill(driver, 'input[aria-label="number input for Steps"]', 8)
        fill(driver, "#seed input", 42)
        press_generate(driver)
        wait_text(driver, "#info", "42 ·", timeout=120)
        time.sleep(1)
        out = ROOT / "docs"
        driver.save_screenshot(str(out / "app-advanced.png"))
        find(driver, "#advanced input").click()  # the Advanced column closed: the page as it opens
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        driver.save_screenshot(str(out / "app.png"))
        find(driver, "#input-switch input").click()  # the Input image panel, with the result sent into it
        find(driver, "#send-to-input").click()
        wait_text(driver, "#plan", "vary-subtle of input", timeout=60)
        driver.execute_script("document.querySelector('#prompt').scrollIntoView()")
        time.sleep(1)
        driver.save_screenshot(str(out / "app-input-image.png"))
    finally:
        driver.quit()
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
