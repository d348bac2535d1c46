// `dreamllm serve` driven by the official OpenAI client (npm `openai`) on the committed shapes-world model: chat
// with a picture, streaming, image generation and the documents route give what `dreamllm ask`, `create` and
// `write` give for the same seed; bad requests get OpenAI-shaped errors and the server keeps serving; a client
// that leaves mid-stream frees its slot; SIGTERM ends the server with exit code 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import OpenAI from 'openai';
import { startServer, stopServer, cli, sseEvents, sleep, DREAMLLM, MODEL, MODEL_ID, WORK } from './common.mjs';

const KEY = 'test-key';
let server;
let client;
const scene = path.join(WORK, 'scene.png');
const question = 'What colour is the triangle?';
let sceneUri;

before(async () => {
  cli(['world', 'render', '--size', '36', '-p',
       'a large yellow triangle at the center and a small green cross at the top right', '-o', scene]);
  sceneUri = 'data:image/png;base64,' + readFileSync(scene).toString('base64');
  server = await startServer(['--api-key', KEY, '--max-body-mb', '1']);
  client = new OpenAI({ apiKey: KEY, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (server) assert.equal(await stopServer(server), 0, 'SIGTERM ends the server with exit code 0');
});

const imageQuestion = () => [{
  role: 'user',
  content: [
    { type: 'image_url', image_url: { url: sceneUri } },
    { type: 'text', text: question },
  ],
}];

// `ask` prints the answer and a newline.
const ask = (extra) =>
  cli(['ask', '-m', MODEL, '--template', 'train', '-i', scene, '-p', question, ...extra]).replace(/\n$/, '');

test('models and health', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL_ID]);
  const health = await (await fetch(`${server.url}/health`)).json();
  assert.equal(health.status, 'ok');
  assert.equal(health.can_draw, true);
});

test('chat with a picture answers as dreamllm ask does (greedy)', async () => {
  const r = await client.chat.completions.create({
    model: MODEL_ID, messages: imageQuestion(), temperature: 0, max_tokens: 8,
  });
  const expected = ask(['-n', '8']);
  assert.ok(expected.length > 0);
  assert.equal(r.choices[0].message.content, expected);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  const textOnly = await client.chat.completions.create({
    model: MODEL_ID, messages: [{ role: 'user', content: question }], temperature: 0, max_tokens: 1,
  });
  assert.ok(r.usage.prompt_tokens > textOnly.usage.prompt_tokens + 8, 'the picture counts as its image span');
  assert.ok(r.usage.completion_tokens >= 1);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('sampled chat answers as dreamllm ask does with the same seed', async () => {
  for (const seed of [3, 11]) {
    const r = await client.chat.completions.create({
      model: MODEL_ID, messages: imageQuestion(), temperature: 1.5, max_tokens: 6, seed,
    });
    assert.equal(r.choices[0].message.content, ask(['-n', '6', '--temp', '1.5', '--text-seed', String(seed)]));
  }
});

test('streamed chat sends the same answer in chunks, [DONE] and usage', async () => {
  const stream = await client.chat.completions.create({
    model: MODEL_ID, messages: imageQuestion(), temperature: 0, max_tokens: 8, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, ask(['-n', '8']));
  assert.ok(chunks >= 3, 'role, content and finish arrive as separate chunks');
  assert.ok(finish);
  assert.ok(usage && usage.completion_tokens >= 1);
});

test('n choices: choice i samples with seed + i', async () => {
  const r = await client.chat.completions.create({
    model: MODEL_ID, messages: imageQuestion(), temperature: 1.5, max_tokens: 6, seed: 20, n: 2,
  });
  assert.equal(r.choices.length, 2);
  assert.equal(r.choices[0].message.content, ask(['-n', '6', '--temp', '1.5', '--text-seed', '20']));
  assert.equal(r.choices[1].message.content, ask(['-n', '6', '--temp', '1.5', '--text-seed', '21']));
});

test('a chat that asks for a drawing gets a picture in the message', async () => {
  const r = await client.chat.completions.create({
    model: MODEL_ID, temperature: 0, max_tokens: 32,
    messages: [{ role: 'user', content: 'Draw a large red circle at the top left.' }],
    // Extensions, as `dreamllm create` names them.
    steps: 10, sampler: 'dpmpp2m', guidance: 3,
  });
  const content = r.choices[0].message.content;
  assert.ok(Array.isArray(content), `a drawing answer holds content parts, got ${JSON.stringify(content).slice(0, 200)}`);
  const pictures = content.filter((p) => p.type === 'image_url');
  assert.ok(pictures.length >= 1);
  assert.match(pictures[0].image_url.url, /^data:image\/png;base64,iVBOR/);
});

test('image generation gives the pictures of dreamllm create for the same seed', async () => {
  const r = await client.images.generate({
    model: MODEL_ID, prompt: 'a large red circle at the top left', n: 2, response_format: 'b64_json',
    seed: 7, steps: 12, sampler: 'dpmpp2m', guidance: 3, negative_prompt: 'blue',
  });
  assert.equal(r.data.length, 2);
  const out = path.join(WORK, 'create.png');
  cli(['create', '-m', MODEL, '-p', 'a large red circle at the top left', '--seed', '7', '--steps', '12',
       '--sampler', 'dpmpp2m', '--cfg-scale', '3', '--negative', 'blue', '--count', '2', '-o', out]);
  for (let k = 0; k < 2; k++) {
    const expected = readFileSync(path.join(WORK, `create_${k + 1}.png`));
    assert.ok(Buffer.from(r.data[k].b64_json, 'base64').equals(expected), `picture ${k + 1} differs from create's`);
  }
});

test('the documents route streams what dreamllm write writes', async () => {
  const prompt = 'Show how to draw a large red circle at the top left and a small blue square at the bottom right step by step.';
  const res = await fetch(`${server.url}/v1/documents`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: MODEL_ID, prompt, steps: 10, sampler: 'dpmpp2m', guidance: 3, max_images: 2 }),
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /text\/event-stream/);
  let text = '';
  const pictures = [];
  let done = null;
  let sawDone = false;
  for await (const e of sseEvents(res)) {
    if (e === '[DONE]') { sawDone = true; continue; }
    if (e.type === 'text') text += e.text;
    if (e.type === 'image') pictures.push(Buffer.from(e.url.split(',')[1], 'base64'));
    if (e.type === 'done') done = e;
  }
  assert.ok(sawDone && done);
  const html = path.join(WORK, 'doc.html');
  const stdout = cli(['write', '-m', MODEL, '-o', html, '--steps', '10', '--sampler', 'dpmpp2m', '--cfg-scale', '3',
                      '--max-images', '2', '-p', prompt]);
  assert.equal(done.images, pictures.length);
  for (let k = 0; k < pictures.length; k++)
    assert.ok(pictures[k].equals(readFileSync(path.join(WORK, `doc_${k + 1}.png`))), `picture ${k + 1} differs`);
  // write prints the same text, with "[image N]" lines where the pictures go.
  assert.equal(text.replace(/\s+/g, ' ').trim(), stdout.replace(/\n\[image \d+\]\n/g, '').replace(/\s+/g, ' ').trim());
});

test('bad requests get OpenAI-shaped errors and the server keeps serving', async () => {
  const wrongKey = new OpenAI({ apiKey: 'wrong', baseURL: `${server.url}/v1`, maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e) => e.status === 401 && e.error?.type === 'authentication_error');

  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e.status === 404 && e.code === 'model_not_found' && /shapes-world/.test(e.message));

  // Over --max-body-mb 1: 413 with the limit named.
  await assert.rejects(
    client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: 'x'.repeat(1_200_000) }] }),
    (e) => e.status === 413 && /1 MiB/.test(e.message));

  // Longer than the context (512 positions): 400 naming the limit.
  await assert.rejects(
    client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: 'red '.repeat(2000) }] }),
    (e) => e.status === 400 && e.code === 'context_length_exceeded' && /holds 512/.test(e.message));

  await assert.rejects(
    client.chat.completions.create({ model: MODEL_ID, messages: [{ role: 'user', content: 'hi' }], temperature: 'hot' }),
    (e) => e.status === 400 && e.param === 'temperature');

  await assert.rejects(
    client.chat.completions.create({
      model: MODEL_ID,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,aGVsbG8=' } }] }],
    }),
    (e) => e.status === 400 && /not a readable image/.test(e.message));

  // Outside the model's declared prompt language: refused as `create` refuses it, drawn anyway with force.
  await assert.rejects(
    client.images.generate({ model: MODEL_ID, prompt: 'a photo of a cat on a sofa', steps: 2 }),
    (e) => e.status === 400 && /prompt language|shapes-world/.test(e.message));
  const forced = await client.images.generate({ model: MODEL_ID, prompt: 'a photo of a cat on a sofa', steps: 2, force: true });
  assert.equal(forced.data.length, 1);

  await assert.rejects(
    client.images.generate({ model: MODEL_ID, prompt: 'x', size: '9000x9000' }),
    (e) => e.status === 400 && e.param === 'size');

  const raw = async (method, url, body, headers = {}) => {
    const res = await fetch(`${server.url}${url}`, {
      method, body, headers: { Authorization: `Bearer ${KEY}`, ...headers },
    });
    return { status: res.status, body: await res.json() };
  };
  let r = await raw('POST', '/v1/chat/completions', '{"model": "shapes-world", "messages": [', { 'Content-Type': 'application/json' });
  assert.equal(r.status, 400);
  assert.equal(r.body.error.code, 'invalid_json');
  r = await raw('GET', '/v1/no-such-route');
  assert.equal(r.status, 404);
  assert.equal(r.body.error.type, 'not_found_error');
  r = await raw('GET', '/v1/models/..%2F..%2Fetc%2Fpasswd');
  assert.equal(r.status, 404);
  r = await raw('GET', '/../../../etc/passwd');
  assert.equal(r.status, 404);

  const health = await (await fetch(`${server.url}/health`)).json();
  assert.equal(health.status, 'ok');
  const again = await client.chat.completions.create({ model: MODEL_ID, messages: imageQuestion(), temperature: 0, max_tokens: 8 });
  assert.equal(again.choices[0].message.content, ask(['-n', '8']));
});

test('a client that leaves mid-stream frees its slot', async () => {
  const controller = new AbortController();
  const res = await fetch(`${server.url}/v1/documents`, {
    method: 'POST', signal: controller.signal,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: MODEL_ID, prompt: 'Build a picture with three shapes step by step.', steps: 200, max_images: 8, max_tokens: 400 }),
  });
  const events = sseEvents(res);
  await events.next();
  controller.abort();
  let busy = 1;
  for (let i = 0; i < 100 && busy > 0; i++) {
    await sleep(100);
    busy = (await (await fetch(`${server.url}/health`)).json()).slots_busy;
  }
  assert.equal(busy, 0, 'the slot was given back');

  // Not streamed: the server notices too (it writes leading whitespace before the JSON as it works).
  const quiet = new AbortController();
  const reply = await fetch(`${server.url}/v1/images/generations`, {
    method: 'POST', signal: quiet.signal,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: MODEL_ID, prompt: 'a large red circle at the top left', steps: 1000, n: 8 }),
  });
  assert.equal(reply.status, 200);
  await sleep(300);
  assert.equal((await (await fetch(`${server.url}/health`)).json()).slots_busy, 1);
  quiet.abort();
  await assert.rejects(reply.text(), (e) => e.name === 'AbortError');
  busy = 1;
  for (let i = 0; i < 100 && busy > 0; i++) {
    await sleep(100);
    busy = (await (await fetch(`${server.url}/health`)).json()).slots_busy;
  }
  assert.equal(busy, 0, 'the slot of the request that was not streamed was given back');
});

test('a full queue answers 503 with Retry-After', async () => {
  const busy = await startServer(['--max-queue', '0', '--queue-timeout', '0']);
  try {
    const body = JSON.stringify({ model: MODEL_ID, prompt: 'a large red circle at the top left', steps: 80 });
    const post = () => fetch(`${busy.url}/v1/images/generations`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
    const first = post();
    await sleep(300);
    const second = await post();
    assert.equal(second.status, 503);
    assert.ok(Number(second.headers.get('retry-after')) > 0);
    assert.equal((await second.json()).error.type, 'server_overloaded');
    assert.equal((await first).status, 200);
  } finally {
    assert.equal(await stopServer(busy), 0);
  }
});

test('a port in use and a model that does not load end the start with exit code 1, not a crash', () => {
  const port = new URL(server.url).port;
  const taken = spawnSync(DREAMLLM, ['serve', '-m', MODEL, '--port', port], { encoding: 'utf8', timeout: 30000 });
  assert.equal(taken.status, 1, taken.stderr);
  assert.match(taken.stderr, new RegExp(`cannot listen on 127.0.0.1:${port}`));
  const missing = spawnSync(DREAMLLM, ['serve', '-m', '/no/such/model', '--port', '0'], { encoding: 'utf8', timeout: 30000 });
  assert.equal(missing.status, 1, missing.stderr);
  assert.match(missing.stderr, /does not exist/);
});
