// The dashboard in a real browser: Debian's Chromium, headless, driven by
// playwright-core. Run by tests/it/dashboard.rs with HERVE_URL, ADMIN_ID, ADMIN_SECRET,
// APP (a Python program printing lines) and SHOTS (where screenshots go).
// Prints "ok" at the end; any failure throws (non-zero exit, with the reason).
import { chromium } from "playwright-core";

const base = process.env.HERVE_URL;
const [id, secret] = [process.env.ADMIN_ID, process.env.ADMIN_SECRET];
const shots = process.env.SHOTS;
const app = process.env.APP;

function step(what) { console.error(new Date().toISOString(), what); }

function check(condition, what) {
  if (!condition) { throw new Error("failed: " + what); }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const offsite = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(base)) { offsite.push(request.url()); }
  });
  page.on("dialog", (dialog) => dialog.accept());
  const alerts = [];
  // Uncaught script errors (answers like 404 for a service without logs are not).
  page.on("pageerror", (error) => alerts.push(String(error)));

  step("sign-in");
  // A wrong secret: refused, and still the sign-in form.
  await page.goto(base + "/ui/");
  await page.fill('input[name="id"]', id);
  await page.fill('input[name="secret"]', "not-the-secret");
  await page.click('button[type="submit"]');
  await page.waitForFunction(() => document.querySelector("#message")?.textContent.includes("Wrong id or secret."), null, { timeout: 10000 });
  await page.screenshot({ path: shots + "/sign-in.png" });

  // Sign in.
  await page.fill('input[name="id"]', id);
  await page.fill('input[name="secret"]', secret);
  await page.click('button[type="submit"]');
  await page.waitForSelector("#services");
  // The certificate the test uploaded, with its state.
  await page.waitForSelector('#certificates tr[data-host="ui.test"]');
  check((await page.textContent('#certificates tr[data-host="ui.test"] td:nth-child(3)')) === "valid", "the certificate is valid");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "herve_session");
  check(session && session.httpOnly && session.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");

  step("register");
  // Register an echo service through the form, with a description that is markup.
  await page.evaluate(() => { document.querySelector("#register").open = true; });
  await page.fill('#register-form input[name="name"]', "ui-echo");
  await page.selectOption("#types", "echo");
  await page.fill('#register-form input[name="description"]', "<img src=x id=pwned onerror=alert(1)>");
  await page.click('#register-form button[type="submit"]');
  const row = 'tr[data-name="ui-echo"]';
  await page.waitForSelector(row);
  check((await page.textContent(row + " td:nth-child(3)")) === "registered", "registered");

  step("start");
  // Start it and see it running.
  await page.click(row + ' button[data-action="start"]');
  await page.waitForFunction((r) => document.querySelector(r + " td:nth-child(3)")?.textContent === "running", row);

  step("traffic");
  // Traffic moves its request rate.
  const uuid = (await page.getAttribute(row + " a", "href")).split("/").pop();
  const load = setInterval(() => {
    fetch(base + "/" + uuid + "/echo", { method: "POST", body: "hi" }).catch(() => {});
  }, 20);
  await page.waitForFunction((r) => Number(document.querySelector(r + " td.rate")?.textContent) > 0, row, { timeout: 15000 });
  clearInterval(load);
  await page.screenshot({ path: shots + "/services.png" });

  step("detail");
  // Its page: the description is text, not an element.
  await page.click(row + " a");
  await page.waitForSelector('dd[data-key="description"]');
  check((await page.textContent('dd[data-key="description"]')) === "<img src=x id=pwned onerror=alert(1)>", "markup shows as text");
  check((await page.$("#pwned")) === null, "no element was made of a service's fields");
  // Edit it: the form holds its fields; a new description is saved and shown.
  await page.evaluate(() => { document.querySelector("#edit").open = true; });
  await page.waitForFunction(() => document.querySelector('#edit-form textarea').value.includes("description=<img"));
  await page.fill("#edit-form textarea", "description=edited from the dashboard");
  await page.click('#edit-form button[type="submit"]');
  await page.waitForFunction(() => document.querySelector('dd[data-key="description"]')?.textContent === "edited from the dashboard", null, { timeout: 10000 });
  // Its charts: requests per second and mean latency, drawn from the metrics.
  await page.waitForFunction(() => /ms\)/.test(document.querySelector("#latency-now")?.textContent || ""), null, { timeout: 10000 });
  check((await page.getAttribute("#chart-line", "points")).length > 0, "a rate chart");

  step("process");
  // A process service's page shows its logs live.
  await page.goto(base + "/ui/#/");
  await page.evaluate(() => { document.querySelector("#register").open = true; });
  await page.fill('#register-form input[name="name"]', "ui-ticker");
  await page.selectOption("#types", "process");
  // The form has the inputs the process type describes.
  await page.fill('#register-form input[name="command"]', "python3 " + app);
  await page.fill('#register-form textarea[name="env"]', "MODE=test\nOTHER=1");
  await page.click('#register-form button[type="submit"]');
  const ticker = 'tr[data-name="ui-ticker"]';
  await page.waitForSelector(ticker);
  const tickerUuid = (await page.getAttribute(ticker + " a", "href")).split("/").pop();
  const registered = await (await page.context().request.get(base + "/services/" + tickerUuid)).json();
  check(JSON.stringify(registered.data.config.env) === JSON.stringify(["MODE=test", "OTHER=1"]), "a list field became repeated values: " + JSON.stringify(registered.data.config.env));
  await page.click(ticker + ' button[data-action="start"]');
  await page.waitForFunction((r) => document.querySelector(r + " td:nth-child(3)")?.textContent === "running", ticker, { timeout: 20000 });
  await page.click(ticker + " a");
  await page.waitForFunction(() => /tick \d+/.test(document.querySelector("#logs")?.textContent || ""), null, { timeout: 10000 });
  const first = (await page.textContent("#logs")).match(/tick (\d+)/g).length;
  await page.waitForFunction((n) => (document.querySelector("#logs").textContent.match(/tick (\d+)/g) || []).length > n, first, { timeout: 5000 });
  await page.screenshot({ path: shots + "/service.png" });
  // On a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(base + "/ui/#/");
  await page.waitForSelector('tr[data-name="ui-ticker"]');
  await page.screenshot({ path: shots + "/phone.png" });
  await page.setViewportSize({ width: 1200, height: 800 });

  step("unregister");
  // Stop and unregister both (the confirmation is accepted).
  await page.goto(base + "/ui/#/");
  for (const name of ["ui-echo", "ui-ticker"]) {
    const r = `tr[data-name="${name}"]`;
    await page.waitForSelector(r);
    await page.click(r + ' button[data-action="unregister"]');
    await page.waitForSelector(r, { state: "detached", timeout: 20000 });
  }

  step("sign-out");
  // Sign out: the page is the sign-in form again, and the session is gone.
  await page.click("#signout");
  await page.waitForSelector('input[name="secret"]');
  const after = (await page.context().request.get(base + "/services")).status();
  check(after === 401, "signed out: " + after);

  check(offsite.length === 0, "no request left Herve: " + offsite.join(", "));
  check(alerts.length === 0, "no script error: " + alerts.join("; "));
  console.log("ok");
} finally {
  await browser.close();
}
