"use strict";
// Renders the daemon's state (inlined in the page, then pushed by server-sent events).
(function () {
  const $ = (id) => document.getElementById(id);
  const sat = (n) => Number(n).toLocaleString("en-US");
  const LABELS = ["Contract txid", "Role", "State", "Value", "Paid", "Payments", "Deadline in", "Closing txid"];

  function duration(seconds) {
    if (seconds <= 0) return "passed";
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
          m = Math.floor(seconds % 3600 / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(seconds % 60)}s`;
  }

  function cell(row, text, cls, label) {
    const td = row.insertCell();
    td.textContent = text;
    td.dataset.label = label;
    if (cls) td.className = cls;
  }

  function bars(svg, values) {
    const ns = "http://www.w3.org/2000/svg", width = 600, height = 120;
    const max = Math.max(...values, 0);
    svg.replaceChildren();
    const base = document.createElementNS(ns, "line");
    Object.entries({x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5}).forEach(([k, v]) => base.setAttribute(k, v));
    svg.appendChild(base);
    const w = width / values.length;
    values.forEach((v, i) => {
      if (!v) return;
      const r = document.createElementNS(ns, "rect"), h = Math.max(2, (v / max) * (height - 6));
      r.setAttribute("x", i * w + 1); r.setAttribute("width", Math.max(1, w - 2));
      r.setAttribute("y", height - h); r.setAttribute("height", h);
      const title = document.createElementNS(ns, "title");
      title.textContent = String(v);
      r.appendChild(title);
      svg.appendChild(r);
    });
  }

  function render(s) {
    $("network").textContent = `${s.network} · v${s.version}`;
    const node = $("node");
    node.textContent = s.node.up ? "up" : "down";
    node.className = "big " + (s.node.up ? "up" : "down");
    $("tip").textContent = s.node.height === null ? "no block seen yet" : `tip ${sat(s.node.height)}`;
    const open = s.channels.filter((c) => c.status === "open");
    $("open").textContent = String(open.length);
    $("locked").textContent = `${sat(open.reduce((a, c) => a + c.value, 0))} sat locked`;
    const a = s.activity, count = a.payments.reduce((x, y) => x + y, 0);
    $("hour-payments").textContent = sat(count);
    $("hour-rate").textContent = `${(count / 3600).toFixed(3)} per second`;
    $("hour-received").textContent = sat(a.received.reduce((x, y) => x + y, 0));
    bars($("chart-rate"), a.payments.map((n) => n / 60));
    bars($("chart-received"), a.received);
    const body = $("channels").tBodies[0];
    body.replaceChildren();
    for (const c of s.channels) {
      const row = body.insertRow();
      const values = [[c.contract_txid, "txid"], [c.role], [c.status, "state-" + c.status],
        [sat(c.value), "num"], [sat(c.paid), "num"], [String(c.payments), "num"],
        [c.status === "open" || c.status === "closing" ? duration(c.deadline - s.now) : "–"],
        [c.closing_txid || "–", "txid"]];
      values.forEach(([text, cls], i) => cell(row, text, cls, LABELS[i]));
    }
    $("no-channels").hidden = s.channels.length > 0;
  }

  render(JSON.parse($("state").textContent));
  if (window.EventSource) {
    const events = new EventSource("/events");
    events.addEventListener("state", (e) => {
      render(JSON.parse(e.data));
      const live = $("live");
      live.textContent = "live"; live.className = "badge on";
      document.body.dataset.live = "yes";
    });
    events.onerror = () => { const live = $("live"); live.textContent = "reconnecting"; live.className = "badge off"; };
  }
})();
