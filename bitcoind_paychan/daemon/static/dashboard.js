"use strict";
// Renders the daemon's state (inlined in the page, then pushed by server-sent events).
(function () {
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";
  const num = (n) => Number(n).toLocaleString("en-US");
  const rate = (n) => Number(n).toLocaleString("en-US", {minimumFractionDigits: 1, maximumFractionDigits: 1});
  const LABELS = ["Contract txid", "Role", "State", "Peer", "Value", "Paid", "Payments", "Deadline in",
                  "Contract conf.", "Closing txid", "Closing conf.", "Generation", "Re-anchor"];
  const ROLE = {server: {title: "Server: received", name: "Server", verb: "received"},
                client: {title: "Client: paid", name: "Client", verb: "paid"}};
  // Chart geometry (viewBox units): room on the left for the value axis, below for times.
  const W = 600, H = 150, LEFT = 54, BOTTOM = 20, TOP = 8;

  function duration(seconds) {
    if (seconds <= 0) return "passed";
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
          m = Math.floor(seconds % 3600 / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(seconds % 60)}s`;
  }

  function clock(unix) {
    const t = new Date(unix * 1000);
    return `${String(t.getHours()).padStart(2, "0")}:${String(t.getMinutes()).padStart(2, "0")}`;
  }

  function el(parent, name, attrs, text) {
    const e = document.createElementNS(NS, name);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }

  function cell(row, text, cls, label) {
    const td = row.insertCell();
    td.textContent = text;
    td.dataset.label = label;
    if (cls) td.className = cls;
  }

  // A bar per minute, a value axis (0, half, top) and a time axis (every 15 minutes).
  function chart(svg, minutes, values, unit) {
    svg.replaceChildren();
    const top = Math.max(...values, 0), plotW = W - LEFT, plotH = H - BOTTOM - TOP;
    const y = el(svg, "g", {class: "y-axis"});
    [0, 0.5, 1].forEach((f) => {
      const at = TOP + plotH * (1 - f);
      el(y, "line", {x1: LEFT, x2: W, y1: at, y2: at});
      el(y, "text", {x: LEFT - 4, y: at + 4, "text-anchor": "end"},
         top ? (unit === "rate" ? rate(top * f) : num(Math.round(top * f))) : "0");
    });
    const x = el(svg, "g", {class: "x-axis"}), w = plotW / minutes.length;
    minutes.forEach((m, i) => {
      if ((minutes.length - 1 - i) % 15) return;
      const at = LEFT + i * w + w / 2;
      el(x, "line", {x1: at, x2: at, y1: TOP + plotH, y2: TOP + plotH + 4});
      el(x, "text", {x: Math.min(at, W - 18), y: H - 4, "text-anchor": "middle"}, clock(m));
    });
    values.forEach((v, i) => {
      if (!v) return;
      const h = Math.max(2, (v / top) * plotH);
      const r = el(svg, "rect", {x: LEFT + i * w + 0.5, width: Math.max(1, w - 1), y: TOP + plotH - h, height: h});
      el(r, "title", {}, `${clock(minutes[i])}: ${unit === "rate" ? rate(v) + " per second" : num(v) + " sat"}`);
    });
  }

  function roleCard(role, s) {
    const a = s.activity[role], mine = s.channels.filter((c) => c.role === role);
    const open = mine.filter((c) => c.status === "open");
    const card = document.createElement("div");
    card.className = "card role";
    card.id = `role-${role}`;
    card.innerHTML = `<h2></h2><p class="big"><span class="rate-live"></span> <span class="unit">per second now</span></p>
      <p class="small rate-hour"></p><p class="small payments-hour"></p><p class="small open"></p>`;
    card.querySelector("h2").textContent = ROLE[role].title;
    card.querySelector(".rate-live").textContent = rate(a.rate_live);
    card.querySelector(".unit").textContent = `per second (last ${s.activity.live_seconds} s)`;
    card.querySelector(".rate-hour").textContent = `${rate(a.rate_hour)} per second, last hour's average`;
    card.querySelector(".payments-hour").textContent =
      `${num(a.total)} payments, ${num(a.amount)} sat ${ROLE[role].verb} in the last hour`;
    card.querySelector(".open").textContent =
      `open channels: ${num(open.length)} · locked: ${num(open.reduce((t, c) => t + c.value, 0))} sat · ` +
      `peers connected: ${num(s.connections[role])}`;
    return card;
  }

  function charts(s) {
    const box = $("charts");
    const wanted = s.roles.flatMap((r) => [[r, "rate"], [r, "amount"]]);
    if (box.children.length !== wanted.length) {
      box.replaceChildren(...wanted.map(([role, kind]) => {
        const f = document.createElement("figure"), cap = document.createElement("figcaption");
        const r = ROLE[role];
        cap.textContent = kind === "rate" ? `${r.name}: payments ${r.verb} per second, by minute`
                                          : `${r.name}: satoshis ${r.verb} per minute`;
        const svg = document.createElementNS(NS, "svg");
        svg.id = `chart-${role}-${kind}`;
        svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
        svg.setAttribute("role", "img");
        svg.setAttribute("aria-label", cap.textContent);
        f.append(cap, svg);
        return f;
      }));
    }
    for (const [role, kind] of wanted) {
      const a = s.activity[role];
      chart($(`chart-${role}-${kind}`), s.activity.minutes,
            kind === "rate" ? a.payments.map((n) => n / 60) : a.amounts, kind);
    }
  }

  function render(s) {
    $("network").textContent = `${s.network} · v${s.version}`;
    const settle = s.settle, card = $("settle-card");
    card.className = "card " + (settle === null ? "" : settle.can_settle ? "ok" : "bad");
    $("settle").textContent = settle === null ? "checking…" : settle.can_settle ? "can settle" : "CANNOT settle";
    $("settle-detail").textContent = settle === null ? "" : settle.can_settle ? settle.detail : `${settle.reason}: ${settle.detail}`;
    const node = $("node");
    node.textContent = s.node.up ? "up" : "down";
    node.className = "big " + (s.node.up ? "up" : "down");
    $("tip").textContent = s.node.height === null ? "no block seen yet" : `tip ${num(s.node.height)}`;
    $("node-error").textContent = s.node.error || "";
    $("node-error").hidden = !s.node.error;
    $("roles").replaceChildren(...s.roles.map((r) => roleCard(r, s)));
    charts(s);
    const body = $("channels").tBodies[0];
    body.replaceChildren();
    for (const c of s.channels) {
      const row = body.insertRow();
      const live = c.status === "open" || c.status === "closing";
      const values = [[c.contract_txid, "txid"], [c.role], [c.status, "state-" + c.status], [c.peer || "–", "peer"],
        [num(c.value), "num"], [num(c.paid), "num"], [num(c.payments), "num"],
        [live ? duration(c.deadline - s.now) : "–"], [num(c.contract_confirmations), "num"],
        [c.closing_txid || "–", "txid"], [c.closing_txid ? num(c.closing_confirmations) : "–", "num"],
        [num(c.generation || 0), "num"], [c.reanchor_txid ? `${c.reanchor_state} ${c.reanchor_txid}` : "–", "txid"]];
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
