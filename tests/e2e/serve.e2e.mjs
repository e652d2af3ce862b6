// Real-browser end-to-end test of `clipsteer serve`: Debian's chromium, driven by playwright-core,
// uploads an image, watches the description grow, checks the bar chart, the past-runs list, a
// plainly shown error, the phone layout and the page under a reverse proxy's path prefix, and
// saves screenshots under target/e2e/.
//
// Usage: node serve.e2e.mjs   (env: CLIPSTEER_BIN, CHROMIUM; defaults: target/debug/clipsteer,
// /usr/bin/chromium)
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import http from "node:http";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.CLIPSTEER_BIN || join(root, "target/debug/clipsteer");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const outDir = join(root, "target/e2e");
const fixture = (p) => join(root, "tests/fixtures", p);

function startServer() {
  return new Promise((resolveUrl, reject) => {
    const server = spawn(bin, [
      "serve", "--port", "0", "--workers", "1", "--queue", "2",
      "--lm", fixture("gpt2-tiny"), "--clip", fixture("clip-tiny-quickgelu"),
    ], { env: { ...process.env, HF_HUB_OFFLINE: "1" }, stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start: ${log}`)), 60000);
    server.stderr.on("data", (chunk) => {
      log += chunk;
      process.stderr.write(chunk);
      const match = log.match(/listening on (http:\/\/[^/\s]+\/)/);
      if (match) { clearTimeout(timer); resolveUrl({ server, url: match[1] }); }
    });
    server.on("exit", (code) => reject(new Error(`server exited (${code}): ${log}`)));
  });
}

// A reverse proxy that serves the server under `prefix`, stripping it and passing the Host on as
// the browser sent it (nginx: location /clip/ { proxy_pass http://…/; proxy_set_header Host $http_host; }).
function startPrefixProxy(target, prefix) {
  const upstream = new URL(target);
  const proxy = http.createServer((req, res) => {
    if (!req.url.startsWith(prefix)) { res.writeHead(404).end(); return; }
    const forward = http.request({
      host: upstream.hostname, port: upstream.port, method: req.method,
      path: "/" + req.url.slice(prefix.length), headers: req.headers,
    }, (answer) => { res.writeHead(answer.statusCode, answer.headers); answer.pipe(res); });
    forward.on("error", () => res.destroy());
    req.pipe(forward);
  });
  return new Promise((ok) => proxy.listen(0, "127.0.0.1", () => ok(proxy)));
}

const profile = mkdtempSync(join(tmpdir(), "clipsteer-e2e-"));
mkdirSync(outDir, { recursive: true });
const { server, url } = await startServer();
// Whatever happens below, the server does not outlive the test.
process.on("exit", () => server.kill("SIGKILL"));
// Without the networking flags chromium keeps calling home, which a CI box without internet
// turns into a stream of failures and delays.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(url);
  await page.waitForSelector("#server-dot.ok", { timeout: 15000 });

  // Every distinct text the description shows, as the viewer would see it change.
  await page.evaluate(() => {
    window.seenTexts = [];
    const out = document.getElementById("output-text");
    new MutationObserver(() => {
      const text = out.textContent;
      if (window.seenTexts[window.seenTexts.length - 1] !== text) window.seenTexts.push(text);
    }).observe(out, { childList: true, subtree: true, characterData: true });
  });
  await page.fill("#max_tokens", "12");
  await page.fill("#top_k", "40");
  await page.setInputFiles("#file", fixture("images/large_1200x900.png"));
  await page.waitForSelector("#phase:text('done')", { timeout: 60000 });

  const seen = await page.evaluate(() => window.seenTexts.filter((t) => t.startsWith("An image of")));
  console.log(`texts seen: ${seen.length}`);
  assert.ok(seen.length >= 3, `the text grew through fewer than 3 updates: ${JSON.stringify(seen)}`);
  for (let i = 1; i < seen.length; i++) {
    assert.ok(seen[i].length >= seen[i - 1].length, `text shrank: ${JSON.stringify(seen.slice(i - 1, i + 1))}`);
  }
  const bars = await page.$$eval(".bar-row .bar", (els) => els.map((e) => parseFloat(e.style.width)));
  assert.ok(bars.length >= 2 && bars.length <= 5, `bar chart rows: ${bars.length}`);
  assert.ok(bars.every((w) => w > 0 && w <= 100), `bar widths: ${bars}`);
  assert.equal(await page.$$eval(".bar-row.chosen", (els) => els.length), 1);
  const tokens = await page.textContent("#tokens");
  assert.equal(tokens, "12");
  const similarity = Number(await page.textContent("#sim"));
  assert.ok(Number.isFinite(similarity) && Math.abs(similarity) <= 1, `final similarity ${similarity}`);
  const nll = Number(await page.textContent("#nll"));
  assert.ok(Number.isFinite(nll) && nll > 0, `final NLL per token ${nll}`);
  assert.equal(await page.$$eval("#steps .step-chip", (els) => els.length), 12);
  assert.equal(await page.$$eval("#history li", (els) => els.length), 1);
  await page.screenshot({ path: join(outDir, "screenshot.png"), fullPage: true });

  // An upload that is not an image: the server's message is shown as it is.
  await page.setInputFiles("#file", { name: "notes.png", mimeType: "image/png", buffer: Buffer.from("just some text") });
  await page.waitForSelector("#error:not([hidden])", { timeout: 15000 });
  const error = await page.textContent("#error");
  assert.match(error, /not an image clipsteer can read/);
  assert.equal(await page.textContent("#phase"), "failed");
  await page.screenshot({ path: join(outDir, "screenshot-error.png") });

  // Phone-sized: a single column without sideways scrolling; the past run survives a reload.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.reload();
  await page.waitForSelector("#server-dot.ok");
  assert.equal(await page.$$eval("#history li", (els) => els.length), 1, "past runs kept in sessionStorage");
  await page.setInputFiles("#file", fixture("images/photo_80x53.jpg"));
  await page.waitForSelector("#phase:text('done')", { timeout: 60000 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `phone layout scrolls sideways by ${overflow}px`);
  await page.screenshot({ path: join(outDir, "screenshot-phone.png"), fullPage: true });
  assert.deepEqual(pageErrors, [], "no script errors on the page");

  // Under a proxy's path prefix: the page's CSS, script and API calls are relative to it.
  const proxy = await startPrefixProxy(url, "/clip/");
  try {
    const proxied = await context.newPage();
    const proxiedErrors = [];
    proxied.on("pageerror", (e) => proxiedErrors.push(e.message));
    await proxied.goto(`http://127.0.0.1:${proxy.address().port}/clip/`);
    await proxied.waitForSelector("#server-dot.ok", { timeout: 15000 });
    await proxied.fill("#max_tokens", "3");
    await proxied.setInputFiles("#file", fixture("images/photo_80x53.jpg"));
    await proxied.waitForSelector("#phase:text('done')", { timeout: 60000 });
    assert.equal(await proxied.textContent("#tokens"), "3");
    assert.deepEqual(proxiedErrors, [], "no script errors under the prefix");
  } finally {
    proxy.close();
  }
  console.log(`e2e: ok (screenshots in ${outDir})`);
} catch (e) {
  // What the page showed when it failed, for the CI log and the artifacts.
  for (const page of context.pages()) {
    await page.screenshot({ path: join(outDir, "failure.png"), fullPage: true }).catch(() => {});
    const shown = await page.evaluate(() => ({
      phase: document.getElementById("phase").textContent,
      error: document.getElementById("error").textContent,
      text: document.getElementById("output-text").textContent,
    })).catch(() => ({}));
    console.error("page state at failure:", JSON.stringify(shown));
  }
  throw e;
} finally {
  await context.close();
  server.kill("SIGTERM");
  rmSync(profile, { recursive: true, force: true });
}
