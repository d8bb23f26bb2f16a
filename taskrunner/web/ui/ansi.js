// ANSI escape sequences in command output: SGR (colours, bold, faint, italic, underline)
// becomes class names (ui.css has the 16 colours) or, for 256-colour and true-colour
// foregrounds, a CSS colour; every other escape sequence is dropped. The text itself is
// returned as text: app.js puts it on the page as text nodes, never as markup.
"use strict";

// CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ESC \), or any other ESC x.
const ESCAPE = /\x1b(?:\[([0-?]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -\/]*[0-~])/g;
// An escape cut off at the end of a chunk: kept until the next chunk of its stream.
const PARTIAL = /\x1b(?:\[[0-?]*[ -\/]*|\][^\x07\x1b]*|[ -\/]*)$/;

class Ansi {
  constructor() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
    this.rgb = null;  // 256-colour and true-colour foregrounds, as a CSS colour
    this.rest = "";
  }

  sgr(params) {
    const p = params === "" ? [0] : params.split(/[;:]/).map((n) => parseInt(n || "0", 10));
    for (let i = 0; i < p.length; i++) {
      const n = p[i];
      if (n === 0) Object.assign(this, {fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, rgb: null});
      else if (n === 1) this.bold = true;
      else if (n === 2) this.dim = true;
      else if (n === 3) this.italic = true;
      else if (n === 4) this.underline = true;
      else if (n === 22) this.bold = this.dim = false;
      else if (n === 23) this.italic = false;
      else if (n === 24) this.underline = false;
      else if (n >= 30 && n <= 37) Object.assign(this, {fg: n - 30, rgb: null});
      else if (n >= 90 && n <= 97) Object.assign(this, {fg: n - 90 + 8, rgb: null});
      else if (n === 39) Object.assign(this, {fg: null, rgb: null});
      else if (n >= 40 && n <= 47) this.bg = n - 40;
      else if (n >= 100 && n <= 107) this.bg = n - 100 + 8;
      else if (n === 49) this.bg = null;
      else if (n === 38 || n === 48) {
        // 38;5;N (256 colours) or 38;2;R;G;B: foregrounds kept, backgrounds skipped.
        if (p[i + 1] === 5) {
          const c = p[i + 2];
          if (n === 38 && c < 16) Object.assign(this, {fg: c, rgb: null});
          else if (n === 38 && c >= 16 && c < 256) Object.assign(this, {fg: null, rgb: xterm256(c)});
          i += 2;
        } else if (p[i + 1] === 2) {
          if (n === 38 && p.slice(i + 2, i + 5).every((v) => v >= 0 && v < 256)) {
            Object.assign(this, {fg: null, rgb: `rgb(${p[i + 2]}, ${p[i + 3]}, ${p[i + 4]})`});
          }
          i += 4;
        }
      }
    }
  }

  classes() {
    const c = [];
    if (this.fg !== null) c.push(`fg${this.bold && this.fg < 8 ? this.fg + 8 : this.fg}`);
    if (this.bg !== null) c.push(`bg${this.bg}`);
    if (this.bold) c.push("b");
    if (this.dim) c.push("dim");
    if (this.italic) c.push("i");
    if (this.underline) c.push("u");
    return c.join(" ");
  }

  // The chunk as [text, classes, rgb] pieces, its escapes applied to the state.
  feed(chunk) {
    let text = this.rest + chunk;
    this.rest = "";
    const partial = PARTIAL.exec(text);
    if (partial && partial[0].length < 4096) {  // an endless "escape" is shown as text
      this.rest = partial[0];
      text = text.slice(0, partial.index);
    }
    const pieces = [];
    let at = 0;
    ESCAPE.lastIndex = 0;
    for (let m; (m = ESCAPE.exec(text)) !== null;) {
      if (m.index > at) pieces.push([text.slice(at, m.index), this.classes(), this.rgb]);
      if (m[2] === "m") this.sgr(m[1]);
      at = ESCAPE.lastIndex;
    }
    if (at < text.length) pieces.push([text.slice(at), this.classes(), this.rgb]);
    return pieces;
  }
}

function xterm256(c) {
  if (c >= 232) {
    const v = 8 + (c - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const i = c - 16;
  const level = (v) => (v === 0 ? 0 : 55 + v * 40);
  return `rgb(${level(Math.floor(i / 36))}, ${level(Math.floor(i / 6) % 6)}, ${level(i % 6)})`;
}
