// What the server tests share: starting `dreamllm serve` on a free loopback port, running the CLI for the answers
// to compare with, and reading server-sent events.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const DREAMLLM = process.env.DREAMLLM ?? path.join(ROOT, 'build', 'bin', 'dreamllm');
export const MODEL = process.env.DL_MODEL ?? path.join(ROOT, 'models', 'shapes-world');
export const MODEL_ID = 'shapes-world';
// Artefacts (pictures, screenshots) go under the build tree.
export const WORK = process.env.DL_SERVER_TEST_DIR ?? path.join(ROOT, 'build', 'server-tests');
mkdirSync(WORK, { recursive: true });

// Starts the server with `args` on port 0 and resolves once it prints the port it listens on.
export function startServer(args = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(DREAMLLM, ['serve', '-m', MODEL, '--template', 'train', '--port', '0', '-t', '2', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`the server did not start in 60 s: ${err}`));
    }, 60000);
    proc.stderr.on('data', (d) => { err += d; });
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening ([\d.]+):(\d+)/);
      if (m) {
        clearTimeout(timer);
        const url = `http://${m[1]}:${m[2]}`;
        const exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
        resolve({ proc, url, exited, stderr: () => err });
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code} before listening: ${err}`));
    });
  });
}

// Stops the server with SIGTERM and returns its exit code.
export async function stopServer(server) {
  server.proc.kill('SIGTERM');
  const { code, signal } = await server.exited;
  return signal ? `signal ${signal}` : code;
}

export function cli(args) {
  return execFileSync(DREAMLLM, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

// The events of a text/event-stream body: parsed JSON objects, and the string '[DONE]'.
export async function* sseEvents(response) {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        yield data === '[DONE]' ? data : JSON.parse(data);
      }
    }
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
