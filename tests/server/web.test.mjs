// The web page at / in a real browser: playwright-core driving Debian's Chromium (no browser is downloaded). On a
// desktop-sized and a phone-sized window: upload a picture and ask about it (the streamed answer is `dreamllm
// ask`'s), ask for a drawing and see the picture appear, write a document with its pictures. Screenshots are kept
// under the build tree (server-tests/screenshots) as the test's artefacts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, stopServer, cli, MODEL, WORK } from './common.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = path.join(WORK, 'screenshots');
const scene = path.join(WORK, 'web-scene.png');
const question = 'What colour is the triangle?';
let server;
let browser;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  cli(['world', 'render', '--size', '36', '-p',
       'a large yellow triangle at the center and a small green cross at the top right', '-o', scene]);
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) assert.equal(await stopServer(server), 0);
});

const windows = [
  { name: 'desktop', viewport: { width: 1280, height: 800 } },
  { name: 'phone', viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
];

for (const w of windows) {
  test(`chat, drawing and documents on a ${w.name}-sized window`, { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is not installed` }, async () => {
    const context = await browser.newContext({ viewport: w.viewport, isMobile: w.isMobile, hasTouch: w.hasTouch, deviceScaleFactor: w.deviceScaleFactor });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url + '/');
    await page.waitForFunction(() => document.getElementById('status-dot').classList.contains('ok'));
    await page.screenshot({ path: path.join(SHOTS, `${w.name}-0-empty.png`) });

    // Settings: greedy answers and the shapes world's drawing settings (the page's defaults).
    const settings = await page.evaluate(() => JSON.parse(localStorage.getItem('dreamllm.settings') || '{}'));
    assert.deepEqual(settings, {});

    // A picture and a question.
    await page.setInputFiles('#file-input', scene);
    await page.waitForSelector('#pending img');
    await page.fill('#prompt', question);
    await page.click('#send');
    const answer = page.locator('.msg.assistant .bubble').last();
    // The answer streams in with a cursor, which goes when it is complete.
    await page.waitForFunction(() => {
      const b = [...document.querySelectorAll('.msg.assistant .bubble')].pop();
      return b && !b.classList.contains('cursor') && b.textContent.length > 0;
    });
    const expected = cli(['ask', '-m', MODEL, '--template', 'train', '-i', scene, '-p', question, '-n', '256']).replace(/\n$/, '');
    assert.equal((await answer.textContent()).trim(), expected.trim());
    assert.equal(await page.locator('.msg.user .thumbs img').count(), 1, 'the sent picture shows in the message');
    await page.screenshot({ path: path.join(SHOTS, `${w.name}-1-asked.png`) });

    // A drawing, in a new chat (the tiny model draws when asked first in a conversation, as it was trained): the
    // picture appears in the answer.
    await page.click('#new-chat');
    assert.equal(await page.locator('.msg').count(), 0);
    await page.fill('#prompt', 'Draw a large red circle at the top left.');
    await page.press('#prompt', 'Enter');
    await page.waitForSelector('.msg.assistant:last-child .bubble img', { timeout: 60000 });
    const src = await page.locator('.msg.assistant:last-child .bubble img').first().getAttribute('src');
    assert.match(src, /^data:image\/png;base64,/);
    const natural = await page.locator('.msg.assistant:last-child .bubble img').first().evaluate((img) => img.decode().then(() => img.naturalWidth));
    assert.ok(natural > 0, 'the picture decodes');
    await page.waitForFunction(() => document.getElementById('send').textContent === 'Send', null, { timeout: 60000 });
    await page.screenshot({ path: path.join(SHOTS, `${w.name}-2-drawn.png`) });

    // Document mode: text with the model's own pictures.
    await page.click('#tab-doc');
    await page.fill('#prompt', 'Show how to draw a large red circle at the top left and a small blue square at the bottom right step by step.');
    await page.click('#send');
    await page.waitForSelector('#document figure img', { timeout: 60000 });
    // Done when the Stop button is Send again.
    await page.waitForFunction(() => document.getElementById('send').textContent === 'Send', null, { timeout: 60000 });
    assert.ok(await page.locator('#document figure img').count() >= 1);
    assert.ok((await page.locator('#document').textContent()).length > 40);
    await page.screenshot({ path: path.join(SHOTS, `${w.name}-3-document.png`), fullPage: true });

    // Nothing wider than the window (no sideways scrolling on a phone).
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than the window`);
    assert.deepEqual(errors, []);
    await context.close();
  });
}
