// Records what a real browser's EventSource sees of a gateway SSE stream.
//
// Usage: node eventsource.js PAGE_URL STREAM_URL [MAX_SECONDS]
//
// Launches Debian's Chromium (/usr/bin/chromium, never a downloaded browser)
// headless with a fresh profile, opens PAGE_URL (a page of the gateway's own
// origin, so the stream is same-origin), and there opens
// `new EventSource(STREAM_URL)`. Every event the page sees is printed on
// stdout as one JSON line:
//
//   {"kind":"open","readyState":1}
//   {"kind":"subscribed"|"message","data":"...","lastEventId":"...","parsed":<JSON.parse(data)>}
//   {"kind":"error","readyState":0|2,"data":null|"..."}
//
// (`data` is set when the "error" was the gateway's own `event: error`,
// which EventSource also hands to `onerror`.)
//
// `parsed` is absent and `parseError` set when `data` is not JSON. A line
// `close` on stdin closes the EventSource and exits 0; so does the end of
// stdin. The script exits 2 after MAX_SECONDS (default 60) whatever happens,
// so a driver that dies cannot leave a browser running.

"use strict";

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const CHROMIUM = "/usr/bin/chromium";

// The flags that keep the browser on loopback and away from any update,
// sync or telemetry service; the profile dir is fresh for every run.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function emit(record) {
  process.stdout.write(JSON.stringify(record) + "\n");
}

async function main() {
  const [pageUrl, streamUrl, maxSecondsArg] = process.argv.slice(2);
  if (!pageUrl || !streamUrl) {
    process.stderr.write("usage: node eventsource.js PAGE_URL STREAM_URL [MAX_SECONDS]\n");
    process.exit(64);
  }
  const maxSeconds = Number(maxSecondsArg || 60);
  if (!fs.existsSync(CHROMIUM)) {
    process.stderr.write(`${CHROMIUM} is missing: run tests/browser/install.sh\n`);
    process.exit(69);
  }

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "gw-chromium-"));
  let context;
  let finishing = false;
  const finish = async (code) => {
    // `close` on stdin and the end of stdin may both arrive: finish once.
    if (finishing) return;
    finishing = true;
    try {
      if (context) await context.close();
    } catch (_) {
      // The browser is already gone; nothing left to close.
    }
    try {
      fs.rmSync(profile, { recursive: true, force: true, maxRetries: 3 });
    } catch (e) {
      process.stderr.write(`eventsource.js: could not remove ${profile}: ${e}\n`);
    }
    process.exit(code);
  };
  const deadline = setTimeout(() => {
    process.stderr.write(`eventsource.js: ${maxSeconds}s passed, giving up\n`);
    finish(2);
  }, maxSeconds * 1000);
  deadline.unref();

  // launchPersistentContext is how playwright takes a user-data-dir.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => emit({ kind: "pageerror", message: String(e) }));
  await page.exposeFunction("gwReport", (record) => emit(record));
  await page.goto(pageUrl);

  await page.evaluate((url) => {
    const describe = (kind, e) => {
      const record = { kind, data: e.data, lastEventId: e.lastEventId };
      try {
        record.parsed = JSON.parse(e.data);
      } catch (err) {
        record.parseError = String(err);
      }
      return record;
    };
    const es = new EventSource(url);
    window.gwStream = es;
    es.onopen = () => window.gwReport({ kind: "open", readyState: es.readyState });
    es.onerror = (e) =>
      window.gwReport({ kind: "error", readyState: es.readyState, data: e.data ?? null });
    es.onmessage = (e) => window.gwReport(describe("message", e));
    es.addEventListener("subscribed", (e) => window.gwReport(describe("subscribed", e)));
  }, streamUrl);

  const input = readline.createInterface({ input: process.stdin });
  input.on("line", async (line) => {
    if (line.trim() === "close") {
      await page.evaluate(() => window.gwStream.close()).catch(() => {});
      await finish(0);
    }
  });
  input.on("close", () => finish(0));
}

main().catch((e) => {
  process.stderr.write(`eventsource.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
