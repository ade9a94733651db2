// Cargo runner for wasm32-wasip1 test binaries, on Node's built-in WASI (node >= 20):
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node scripts/wasi-runner.mjs" cargo test --target wasm32-wasip1
// Why Node: it is already on the machine, needs no download, and `node:wasi` implements
// preview1 well enough for libtest and proptest (clock, random, args, env, stdout/stderr).
// No directories are pre-opened: tests get no file system (proptest runs without failure
// persistence files) and no processes (libtest runs tests one after another; proptest does
// not fork).
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [, , wasm, ...args] = process.argv;
if (!wasm) {
  console.error('usage: wasi-runner.mjs <test.wasm> [args...]');
  process.exit(2);
}
const env = {};
for (const [k, v] of Object.entries(process.env)) {
  if (k.startsWith('PROPTEST_') || k.startsWith('RUST_')) env[k] = v;
}
const wasi = new WASI({ version: 'preview1', args: [wasm, ...args], env, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(wasm));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
