"""
A page that replays one sample forward by forward: the draft filling block by block, each token coloured by its
snapshot confidence, the tokens the refine remasks, and the refine filling them again. One self-contained HTML
file (no network, no external scripts): sample.py --html=page.html writes it. Open it in any browser; the slider
and the play button step through the forwards, and page.html#frame=N opens it at forward N (for screenshots).
"""

import html
import json
import os

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>DiD: draft, then refine</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px; max-width: 980px; color: #222; }
#text { font: 15px/1.7 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; border: 1px solid #ccc;
        border-radius: 6px; padding: 12px 14px; min-height: 12em; }
#text span { border-radius: 2px; }
.mask { color: #bbb; } .remasked { outline: 2px solid #e0457b; color: #e0457b; background: #fdeaf1; }
.new { outline: 2px solid #222; } .fixed { color: #555; }
#bar { display: flex; gap: 10px; align-items: center; margin: 12px 0; } #frame { flex: 1; }
#legend span { display: inline-block; width: 18px; height: 12px; vertical-align: middle; }
small { color: #666; }
</style></head><body>
<h3>DiD, one sample forward by forward <small>__TITLE__</small></h3>
<div id="bar"><button id="play">play</button><input id="frame" type="range" min="0" value="0">
<span id="label"></span></div>
<div id="text"></div>
<p id="legend"><small>snapshot confidence: <span style="background:hsl(0,75%,82%)"></span> 0
<span style="background:hsl(60,75%,82%)"></span> 0.5 <span style="background:hsl(120,75%,82%)"></span> 1
&nbsp; <span class="remasked" style="width:auto;height:auto">&nbsp;remasked&nbsp;</span>
&nbsp; <span class="new" style="width:auto;height:auto">&nbsp;revealed by this forward&nbsp;</span>
&nbsp; <span class="mask" style="width:auto;height:auto">&#9643; masked</span></small></p>
<script>
const D = __DATA__;
const n = D.tokens.length, frames = D.frames, slider = document.getElementById('frame');
slider.max = frames.length;
const text = document.getElementById('text'), label = document.getElementById('label');
const spans = D.tokens.map(() => { const s = document.createElement('span'); text.appendChild(s); return s; });
function show(f) {
  const tok = D.initial.slice(), conf = new Array(n).fill(null), rem = new Array(n).fill(false);
  let last = null;
  for (let i = 0; i < f; i++) {
    const e = frames[i];
    e.pos.forEach((p, j) => {
      if (e.kind === 'remask') { tok[p] = null; rem[p] = true; }
      else { tok[p] = e.tok[j]; conf[p] = e.conf[j]; rem[p] = false; }
    });
    last = e;
  }
  const fresh = new Set(last && last.kind === 'reveal' ? last.pos : []);
  spans.forEach((s, p) => {
    const t = tok[p];
    s.textContent = t === null ? '\u25ab' : D.strings[t];
    s.className = t === null ? (rem[p] ? 'remasked' : 'mask') : (conf[p] === null ? 'fixed' : '') + (fresh.has(p) ? ' new' : '');
    s.style.background = t === null || conf[p] === null ? '' : 'hsl(' + Math.round(120 * conf[p]) + ',75%,82%)';
    s.title = t === null ? 'masked' : 'confidence ' + (conf[p] === null ? '(given)' : conf[p].toFixed(3));
  });
  const e = frames[Math.max(f - 1, 0)];
  const fwd = frames.slice(0, f).filter(x => x.kind === 'reveal').length;
  label.textContent = f === 0 ? 'start: stage 1 (' + D.stages[0] + ')' : 'step ' + f + ' / ' + frames.length + ', stage ' +
    (e.stage + 1) + ' (' + D.stages[e.stage] + '): ' + (e.kind === 'remask' ? 'remasked ' + e.pos.length + ' tokens' :
    'forward ' + fwd + ', revealed ' + e.pos.length);
  slider.value = f;
}
let timer = null;
document.getElementById('play').onclick = () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  if (+slider.value >= frames.length) show(0);
  timer = setInterval(() => { if (+slider.value >= frames.length) { clearInterval(timer); timer = null; } else show(+slider.value + 1); }, 40);
};
slider.oninput = () => show(+slider.value);
const m = location.hash.match(/frame=(\\d+)/);
show(m ? Math.min(+m[1], frames.length) : 0);
</script></body></html>
"""


def write_html(path, initial, frames, strings, stages, title):
    """initial: the token ids the sample starts from (None where masked); frames: the events in order, each
    dict(kind='reveal' or 'remask', stage, pos, and for reveals tok and conf); strings: {token id: its text}."""
    data = dict(initial=initial, tokens=initial, frames=frames, strings={str(k): v for k, v in strings.items()}, stages=stages)
    page = PAGE.replace('__DATA__', json.dumps(data).replace('</', '<\\/')).replace('__TITLE__', html.escape(title))
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(page)
    os.replace(path + '.tmp', path)
