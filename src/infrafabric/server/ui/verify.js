// Checks a witness proof bundle in the browser, with WebCrypto alone: the checkpoint's
// Ed25519 signature (a C2SP signed note) under the fabric's verifier key, then the
// entry's RFC 9162 inclusion proof against the checkpoint's root. The same checks as
// infrafabric.witness.bundle.verify_bundle, written again so the browser need not trust
// the server's word.
"use strict";
(() => {
  const enc = new TextEncoder();
  const b64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
  const leafHash = (entry) => sha256(concat(new Uint8Array([0]), entry));
  const nodeHash = (left, right) => sha256(concat(new Uint8Array([1]), left, right));

  // RFC 9162 2.1.3.2: the root an inclusion proof leads to.
  async function inclusionRoot(leaf, index, size, proof) {
    if (!(index >= 0 && index < size)) throw new Error(`leaf ${index} is outside a tree of ${size}`);
    let fn = index, sn = size - 1, hash = leaf;
    for (const sibling of proof) {
      if (sn === 0) throw new Error("the proof is longer than the tree is deep");
      if (fn % 2 === 1 || fn === sn) {
        hash = await nodeHash(sibling, hash);
        if (fn % 2 === 0) { while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
      } else {
        hash = await nodeHash(hash, sibling);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the proof is shorter than the tree is deep");
    return hash;
  }

  // A verifier key "name+hash+base64(0x01 || public key)".
  function parseKey(text) {
    const first = text.indexOf("+"), second = text.indexOf("+", first + 1);
    if (first < 1 || second < 0) throw new Error("not a verifier key");
    const raw = b64(text.slice(second + 1));
    if (raw.length !== 33 || raw[0] !== 1) throw new Error("not an Ed25519 verifier key");
    return { name: text.slice(0, first), publicKey: raw.slice(1) };
  }

  // A signed note: its text once a signature by the key verifies.
  async function openNote(note, key) {
    const { name, publicKey } = parseKey(key);
    const split = note.indexOf("\n\n");
    if (split < 0) throw new Error("a signed note is text, a blank line, then signatures");
    const body = note.slice(0, split + 1);
    const keyHash = (await sha256(concat(enc.encode(name + "\n"), new Uint8Array([1]), publicKey))).slice(0, 4);
    const verifyKey = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    for (const line of note.slice(split + 2).split("\n")) {
      if (!line.startsWith("\u2014 ")) continue;
      const space = line.lastIndexOf(" ");
      if (line.slice(2, space) !== name) continue;
      const raw = b64(line.slice(space + 1));
      if (raw.length !== 68 || !same(raw.slice(0, 4), keyHash)) continue;
      if (await crypto.subtle.verify({ name: "Ed25519" }, verifyKey, raw.slice(4), enc.encode(body))) return body;
      throw new Error(`the signature of ${name} does not verify`);
    }
    throw new Error(`no signature by ${name}`);
  }

  // The bundle's entry, index and checkpoint, if everything checks; throws otherwise.
  async function verifyBundle(bundle, key) {
    const body = await openNote(bundle.checkpoint, key);
    const [origin, sizeText, rootText, ...extensions] = body.slice(0, -1).split("\n");
    const size = Number(sizeText), root = b64(rootText);
    if (origin !== parseKey(key).name) throw new Error(`the checkpoint is of another log (${origin})`);
    if (size !== bundle.size) throw new Error("the bundle's size is not the checkpoint's");
    const entry = b64(bundle.entry);
    const computed = await inclusionRoot(await leafHash(entry), bundle.index, size, bundle.proof.map(b64));
    if (!same(computed, root)) throw new Error("the proof leads to a different root");
    const time = (extensions.find((line) => line.startsWith("time ")) || "").slice(5);
    return { index: bundle.index, size, time, entry: JSON.parse(new TextDecoder().decode(entry)) };
  }

  window.IfabVerify = { verifyBundle };
})();
