"""Headless Chromium for the docs tools (`browser_test.py`, `explorer_check.py`): find it, start it through
chromedriver, and keep it off every host but 127.0.0.1."""
import importlib.util, shutil

CHROMIUMS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')


class BrowserMissing(RuntimeError):
    "selenium, Chromium or chromedriver is not installed; the message says what to install."


def start_chromium(width=1280, height=900, extra_args=(), browser_log=False, script_timeout=60):
    "A headless Chromium (selenium WebDriver) that cannot reach any host but 127.0.0.1."
    if importlib.util.find_spec('selenium') is None: raise BrowserMissing('selenium is not installed: pip install selenium')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = next((p for p in map(shutil.which, CHROMIUMS) if p), None)
    driver = shutil.which('chromedriver')
    if not chromium or not driver:
        raise BrowserMissing('headless Chromium not found (need `chromium` and `chromedriver` on PATH): '
                             'apt-get install chromium chromium-driver')
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', f'--window-size={width},{height}',
              '--no-first-run', '--disable-extensions', '--disable-background-networking',
              '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1', *extra_args):
        opts.add_argument(a)
    if browser_log: opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(script_timeout)
    return drv
