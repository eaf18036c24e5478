// Small SVG charts drawn here, no library: a signed horizontal bar chart (contributions left and
// right of a zero axis) and a probability chart (three classes per model). Labels and values are
// real <text> elements; every string goes in as text, never markup. Charts are drawn to the
// width of their container and redrawn when the window is resized.

const NS = "http://www.w3.org/2000/svg";
const FONT_SIZE = 13;
const LINE = 17; // px per label line
const BAR = 14; // bar thickness
const FONT = `${FONT_SIZE}px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif`;
const mounted = new Set();
let measureContext = null;

function node(tag, attributes = {}, text = null) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
  if (text !== null) element.textContent = String(text);
  return element;
}

function textWidth(text, bold) {
  if (!measureContext) measureContext = document.createElement("canvas").getContext("2d");
  if (!measureContext) return text.length * FONT_SIZE * (bold ? 0.62 : 0.56);
  const font = bold ? `bold ${FONT}` : FONT;
  if (measureContext.font !== font) measureContext.font = font;
  return measureContext.measureText(text).width * 1.02; // a little slack for rendering differences
}

/** Lines of at most `width` px, broken at spaces (a longer word is cut); each line but the last
 * keeps its trailing space, so the lines joined are the text itself. */
function wrap(text, width, bold = false) {
  const lines = [];
  let line = "";
  for (const word of text.split(/(?<= )/)) {
    if (line && textWidth((line + word).trimEnd(), bold) > width) {
      lines.push(line);
      line = "";
    }
    let rest = word;
    while (textWidth(rest.trimEnd(), bold) > width && rest.length > 1) {
      let cut = rest.length - 1;
      while (cut > 1 && textWidth(rest.slice(0, cut), bold) > width) cut -= 1;
      lines.push(rest.slice(0, cut));
      rest = rest.slice(cut);
    }
    line += rest;
  }
  if (line || !lines.length) lines.push(line);
  return lines;
}

/** A <text> of several lines (tspans); its textContent is exactly `text`. */
function multiline(text, x, y, width, attributes, bold = false) {
  const element = node("text", { x, y, ...attributes });
  wrap(text, width, bold).forEach((line, i) => {
    element.append(node("tspan", { x, dy: i ? LINE : 0 }, line));
  });
  return element;
}

function frame(width, height, label, attributes) {
  const svg = node("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                           "aria-label": label, ...attributes });
  svg.append(node("title", {}, label));
  return svg;
}

/**
 * Signed bars: rows [{key, label, value, valueText}], each its label on its own line(s) above a
 * bar from the zero axis (right: positive, left: negative) with its value beside the bar's end.
 * attributes: on the <svg> (data-chart, data-model); rowAttribute: the data attribute naming
 * each row's key (data-feature).
 */
export function signedBarChart(rows, { width, label = "contributions", attributes = {}, rowAttribute = "data-key" }) {
  const valueSpace = 58;
  const low = Math.min(0, ...rows.map((r) => r.value));
  const high = Math.max(0, ...rows.map((r) => r.value));
  const span = high - low || 1;
  const usable = Math.max(40, width - 2 * valueSpace);
  const scale = usable / span;
  const zero = valueSpace + -low * scale;
  const wrapped = rows.map((row) => wrap(row.label, width - 4));
  const height = wrapped.reduce((sum, lines) => sum + lines.length * LINE + BAR + 14, 6);
  const svg = frame(width, height, label, attributes);
  let y = 4;
  for (const [i, row] of rows.entries()) {
    const lines = wrapped[i];
    const group = node("g", { class: `bar-row ${row.value < 0 ? "neg" : "pos"}`, [rowAttribute]: row.key });
    group.append(multiline(row.label, 0, y + FONT_SIZE, width - 4, { class: "bar-label" }));
    const barY = y + lines.length * LINE + 2;
    group.append(node("line", { class: "axis", x1: zero, x2: zero, y1: barY - 3, y2: barY + BAR + 3 }));
    const length = Math.abs(row.value) * scale;
    const x = row.value < 0 ? zero - length : zero;
    group.append(node("rect", { class: `bar ${row.value < 0 ? "neg" : "pos"}`, x, y: barY,
                                width: Math.max(length, 1), height: BAR, rx: 2 }));
    const textX = row.value < 0 ? x - 4 : x + Math.max(length, 1) + 4;
    group.append(node("text", { class: "bar-value", x: textX, y: barY + BAR - 3,
                                "text-anchor": row.value < 0 ? "end" : "start" }, row.valueText));
    svg.append(group);
    y = barY + BAR + 12;
  }
  return svg;
}

/**
 * Probabilities: entries [{model, title, probabilities: {class: p}, selected}], one block per
 * model: its title, then one bar per class (0..1) with p.toFixed(3) at the right. Each value
 * text carries data-model and data-class.
 */
export function probabilityChart(entries, labels, { width, label = "class probabilities" }) {
  const labelWidth = Math.min(128, Math.round(width * 0.36));
  const valueSpace = 52;
  const track = Math.max(30, width - labelWidth - valueSpace - 8);
  const titles = entries.map((entry) => wrap(entry.title, width - 4, true).length);
  const height = titles.reduce((sum, lines) => sum + lines * LINE + 6 + labels.length * (BAR + 8) + 12, 4);
  const svg = frame(width, height, label, { "data-chart": "probabilities" });
  let y = 4;
  for (const [i, entry] of entries.entries()) {
    const block = node("g", { class: `model-block${entry.selected ? " selected" : ""}`, "data-model": entry.model });
    block.append(multiline(entry.title, 0, y + FONT_SIZE, width - 4, { class: "block-title" }, true));
    y += titles[i] * LINE + 6;
    for (const cls of labels) {
      const p = entry.probabilities ? entry.probabilities[cls] : undefined;
      const known = typeof p === "number" && Number.isFinite(p);
      const slug = cls.toLowerCase().replace("_", "-");
      const row = node("g", { class: "bar-row", "data-class": cls });
      row.append(node("text", { class: "bar-label", x: 0, y: y + BAR - 3 }, cls.replace("_", " ")));
      row.append(node("rect", { class: "track", x: labelWidth, y, width: track, height: BAR, rx: 2 }));
      if (known) {
        row.append(node("rect", { class: `bar class-${slug}`, x: labelWidth, y,
                                  width: Math.max(0, Math.min(1, p)) * track, height: BAR, rx: 2 }));
      }
      row.append(node("text", { class: "bar-value", x: width - 2, y: y + BAR - 3, "text-anchor": "end",
                                "data-model": entry.model, "data-class": cls }, known ? p.toFixed(3) : "n/a"));
      block.append(row);
      y += BAR + 8;
    }
    svg.append(block);
    y += 12;
  }
  return svg;
}

/** Draw into `container` at its width now and again whenever that width changes. */
export function mount(container, draw) {
  const entry = { container, draw, width: 0 };
  mounted.add(entry);
  if (container.isConnected && container.clientWidth) render(entry);
  else requestAnimationFrame(() => render(entry)); // not laid out yet: draw once it is
}

function render(entry) {
  const width = Math.max(240, Math.floor(entry.container.clientWidth || 640));
  if (width === entry.width) return;
  entry.width = width;
  entry.container.replaceChildren(entry.draw(width));
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const entry of mounted) {
      if (entry.container.isConnected) render(entry);
      else mounted.delete(entry);
    }
  }, 120);
});
