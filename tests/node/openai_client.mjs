// The official OpenAI Node client against a real dsla-serve on stories260K-hf (tests/node/run.sh):
// completions, chat, streaming (with include_usage), logprobs in both shapes, n = 2 (streamed too)
// and best_of, echo with prompt logprobs, chat content parts. Each check throws with what it saw; exit 1 on the first.
import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import OpenAI from "openai";

const bin = process.env.DSLA_BIN ?? "build/bin";
const data = process.env.DSLA_TEST_DATA ?? "../shared";
const model = "stories260K-hf";
const server = spawn(`${bin}/dsla-serve`, [
  "--model", `${data}/models/${model}`, "--endpoint", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
], { stdio: ["ignore", "pipe", "inherit"] });

const url = await new Promise((resolve, reject) => {
  let out = "";
  const timer = setTimeout(() => reject(new Error(`dsla-serve printed no http line: ${out}`)), 30000);
  server.stdout.on("data", (d) => {
    out += d;
    const m = out.match(/http on (http:\/\/\S+)/);
    if (m) { clearTimeout(timer); resolve(m[1]); }
  });
  server.on("exit", (code) => reject(new Error(`dsla-serve exited ${code}: ${out}`)));
});

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: process.env.DSLA_API_KEY ?? "none",
                            maxRetries: 0 });
const prompt = "Once upon a time";
const checks = [];
const check = (name, fn) => checks.push([name, fn]);

let greedy;
check("completions", async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices.length, 1);
  greedy = r.choices[0].text;
  assert.ok(greedy.length > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});
check("chat", async () => {
  const r = await client.chat.completions.create({
    model, max_tokens: 8, temperature: 0,
    messages: [{ role: "system", content: "Tell stories." },
               { role: "user", content: [{ type: "text", text: "A story" }] }],
  });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(typeof r.choices[0].message.content, "string");
});
check("streaming", async () => {
  const stream = await client.completions.create({
    model, prompt, max_tokens: 12, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].text;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, greedy);
  assert.ok(usage && usage.completion_tokens === 12, JSON.stringify(usage));
});
check("chat streaming", async () => {
  const stream = await client.chat.completions.create({
    model, max_tokens: 6, temperature: 0, stream: true,
    messages: [{ role: "user", content: "Hi" }],
  });
  let n = 0, finish = null;
  for await (const chunk of stream) {
    n++;
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.ok(n > 1);
  assert.ok(finish === "length" || finish === "stop");
});
check("completions logprobs", async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0,
                                             logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  assert.equal(lp.tokens.join(""), r.choices[0].text);
  for (let i = 0; i < lp.tokens.length; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const best = Math.max(...Object.values(lp.top_logprobs[i]));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-6, "greedy takes the likeliest");
  }
  assert.equal(lp.text_offset[0], 0);
});
check("chat logprobs", async () => {
  const r = await client.chat.completions.create({
    model, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 2,
    messages: [{ role: "user", content: "Hi" }],
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  assert.equal(content[0].top_logprobs.length, 2);
  assert.deepEqual(content[0].bytes, [...Buffer.from(content[0].token)]);
});
check("n = 2", async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 1,
                                             seed: 3, n: 2 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  assert.notEqual(r.choices[0].text, r.choices[1].text);
});
check("n = 2 streamed, and best_of", async () => {
  const stream = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 1,
                                                  seed: 3, n: 2, stream: true });
  const texts = ["", ""];
  for await (const chunk of stream)
    for (const c of chunk.choices) texts[c.index] += c.text;
  const whole = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 1,
                                                 seed: 3, n: 2 });
  assert.deepEqual(texts, whole.choices.map((c) => c.text));
  const best = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 1,
                                                seed: 3, n: 1, best_of: 3 });
  assert.equal(best.choices.length, 1);
  assert.equal(best.usage.completion_tokens, 3 * 8);
});
check("echo with logprobs", async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0,
                                             echo: true, logprobs: 1 });
  const c = r.choices[0];
  assert.ok(c.text.startsWith(prompt));
  assert.equal(c.logprobs.tokens.length, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(c.logprobs.token_logprobs[0], null);
  assert.ok(c.logprobs.token_logprobs[1] < 0);
});
check("a refused field is a 400 naming it", async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }],
                                     response_format: { type: "json_object" } }),
    (e) => e.status === 400 && e.param === "response_format");
});

let failed = 0;
for (const [name, fn] of checks) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
  }
}
server.kill("SIGTERM");
process.exit(failed ? 1 : 0);
