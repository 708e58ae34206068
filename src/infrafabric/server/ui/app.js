// The InfraFabric dashboard: reads the REST routes once, then follows the fabric's
// events over the WebSocket (no polling, no reloads). A one-second local timer only
// redraws what time changes by itself: lease countdowns and agents' health colours.
"use strict";
(() => {
  const COLUMNS = [
    ["available", "Available", ["available"]],
    ["waiting", "Waiting", ["waiting"]],
    ["claimed", "Claimed", ["claimed"]],
    ["in_progress", "In progress", ["in_progress"]],
    ["blocked", "Blocked", ["blocked"]],
    ["done", "Done", ["completed"]],
    ["failed", "Failed", ["failed", "dead", "cancelled"]],
  ];
  const CARDS_PER_COLUMN = 200;
  const EVENTS_KEPT = 200;
  const state = {
    tasks: new Map(), agents: [], healthy: 30, alive: 300, skew: 0,
    report: null, spend: [], events: [], key: null, view: "board",
    mesh: new Map(), meshStale: 15, // each mesh peer's latest link report, while it reports
  };
  const MESH_STATUS = "if://topic/mesh-status";
  const $ = (selector) => document.querySelector(selector);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(name, value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  };
  const now = () => Date.now() / 1000 + state.skew; // the server's clock, as far as we know

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const response = await fetch(path, { credentials: "same-origin", ...options });
    if (response.status === 401) throw new Unauthorized((await response.json()).error.detail);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? `${body.error.code}: ${body.error.detail}` : `HTTP ${response.status}`);
    }
    return response.json();
  }

  // -- signing in ---------------------------------------------------------------------

  async function login(token) {
    await api("/v1/dashboard/login", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token }),
    });
  }

  function showLogin(message) {
    for (const view of document.querySelectorAll(".view")) view.hidden = true;
    $("#tabs").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
  }

  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login($("#token").value);
      $("#token").value = "";
      await start();
    } catch (error) {
      $("#login-error").textContent = error instanceof Unauthorized ? `Refused: ${error.message}` : String(error);
    }
  });

  $("#logout").addEventListener("click", async () => {
    await fetch("/v1/dashboard/logout", { method: "POST", credentials: "same-origin" });
    if (state.socket) state.socket.close();
    showLogin("Signed out.");
  });

  // -- loading and following -----------------------------------------------------------

  // The board a page at a time (GET /v1/tasks answers at most 5,000 tasks per request).
  async function allTasks() {
    const tasks = [];
    let after = null;
    do {
      const query = after === null ? "" : `&after=${encodeURIComponent(after)}`;
      const page = await api(`/v1/tasks?limit=5000${query}`);
      tasks.push(...page.tasks);
      const next = page.next ?? null;
      // a next that does not move on would ask for the same page for ever
      if (next !== null && (typeof next !== "string" || (after !== null && next <= after))) {
        throw new Error(`MALFORMED: a next page after ${after} at ${next}`);
      }
      after = next;
    } while (after !== null);
    return { tasks };
  }

  async function start() {
    const [tasks, agents] = await Promise.all([allTasks(), api("/v1/agents")]);
    $("#login").hidden = true;
    $("#tabs").hidden = false;
    $("#logout").hidden = false;
    state.tasks = new Map(tasks.tasks.map((task) => [task.id, task]));
    takeAgents(agents);
    await loadMesh();
    await loadSpendHistory();
    await loadReport();
    show(state.view);
    follow();
  }

  function takeAgents(reply) {
    state.agents = reply.agents;
    state.healthy = reply.healthy_within;
    state.alive = reply.alive_within;
    state.skew = reply.now - Date.now() / 1000;
  }

  async function loadMesh() {
    const reply = await api("/v1/mesh");
    state.meshStale = reply.stale_after;
    state.mesh = new Map(reply.peers.map((peer) => [peer.agent, { at: peer.reported_at, links: peer.links }]));
  }

  async function loadReport() {
    try {
      state.report = await api("/v1/governor/report");
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      state.report = null; // a fabric without a governor
    }
    if (state.report) {
      const total = state.report.agents.reduce((sum, book) => sum + book.spent_usd, 0);
      state.spend.push([now(), total]);
    }
  }

  // Spend so far, from the witness log's costed entries (each with its time): the chart
  // starts with the fabric's history, then grows with the governor's reports. The server
  // keeps the series (in at most 500 points) and reads only what was logged since.
  async function loadSpendHistory() {
    let points = [];
    try {
      for (let round = 0; round < 100; round++) { // 200,000 entries a round
        const found = await api("/v1/witness/spend");
        points = found.points;
        if (found.next >= found.size) break; // (a long log is read in a few requests)
      }
    } catch (error) {
      if (error instanceof Unauthorized) throw error; // (a fabric without a witness: no history)
    }
    state.spend = points;
  }

  function follow(delay = 1000) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/ws`);
    state.socket = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "subscribe", topics: ["if://topic/**"] }));
      $("#live").textContent = "live";
      $("#live").classList.add("on");
      delay = 1000;
    };
    let handled = Promise.resolve(); // frames one after another, in the order they came
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type === "event") handled = handled.then(() => onFrame(frame)).catch(() => {});
    };
    socket.onclose = () => {
      $("#live").textContent = "offline";
      $("#live").classList.remove("on");
      if (state.socket !== socket || $("#login").hidden === false) return;
      setTimeout(async () => {
        try { await start(); } catch (error) { if (error instanceof Unauthorized) showLogin(); }
      }, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  let reportDue = null;
  async function onFrame(frame) {
    const event = frame.event;
    if (frame.topic && frame.topic.startsWith("if://topic/mesh-")) {
      // the mesh's own traffic (presence, signaling) is not news; a link report updates the table
      const links = frame.message && frame.message.content && frame.message.content.links;
      if (frame.topic === MESH_STATUS && Array.isArray(links)) { // (the server checked it)
        state.mesh.set(frame.message.sender, { at: now(), links });
        if (state.view === "agents") renderAgents();
      }
      return;
    }
    const shown = event || { kind: "message", topic: frame.topic, actor: frame.message && frame.message.sender };
    state.events.unshift({ at: event ? event.at : now(), ...shown, topic: frame.topic });
    state.events.length = Math.min(state.events.length, EVENTS_KEPT);
    if (event && event.actor) {
      const agent = state.agents.find((a) => a.id === event.actor);
      if (agent) agent.seen_at = event.at;
    }
    if (event && event.task_id) {
      try {
        const reply = await api(`/v1/tasks/${encodeURIComponent(event.task_id)}`);
        state.tasks.set(reply.task.id, reply.task);
      } catch (error) {
        if (error instanceof Unauthorized) return showLogin("Your session ended: sign in again.");
      }
    }
    if (event && event.kind === "agent.enrolled") takeAgents(await api("/v1/agents"));
    if (event && (event.component === "governor" || /completed|progress|failed/.test(event.kind))) {
      clearTimeout(reportDue); // one report for a burst of events
      reportDue = setTimeout(async () => { await loadReport(); render(); }, 300);
    }
    render();
  }

  // -- views ---------------------------------------------------------------------------

  function show(view) {
    state.view = view;
    for (const button of document.querySelectorAll("#tabs button")) {
      button.setAttribute("aria-pressed", String(button.dataset.view === view));
    }
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
    if (view === "witness") loadWitness();
    render();
  }
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.view));
  }

  function render() {
    if (state.view === "board") renderBoard();
    if (state.view === "agents") renderAgents();
    if (state.view === "budgets") renderBudgets();
    if (state.view === "events") renderEvents();
  }

  function renderBoard() {
    const board = $("#board");
    board.replaceChildren();
    const tasks = [...state.tasks.values()].sort((a, b) => b.priority - a.priority || a.created_at - b.created_at);
    for (const [key, title, states] of COLUMNS) {
      const inColumn = tasks.filter((task) => states.includes(task.state));
      const column = el("div", { class: "column", "data-column": key }, el("h2", {}, `${title} (${inColumn.length})`));
      for (const task of inColumn.slice(0, CARDS_PER_COLUMN)) column.append(card(task));
      if (inColumn.length > CARDS_PER_COLUMN) column.append(el("p", { class: "more" }, `and ${inColumn.length - CARDS_PER_COLUMN} more`));
      board.append(column);
    }
  }

  function card(task) {
    const percent = task.milestones.length ? task.milestones[task.milestones.length - 1].percent : 0;
    const lease = task.lease_expires_at && ["claimed", "in_progress", "blocked"].includes(task.state)
      ? el("span", { class: "lease", "data-until": task.lease_expires_at }, leaseText(task.lease_expires_at)) : null;
    return el("article", { class: "card", "data-task": task.id, "data-state": task.state },
      el("div", { class: "title" }, task.title),
      el("div", { class: "meta" }, `${task.id} · p${task.priority}`, task.owner ? ` · ${task.owner.replace("if://agent/", "")}` : ""),
      task.owner ? el("progress", { max: "100", value: String(percent), title: `${percent} %` }) : null,
      lease ? el("div", { class: "meta" }, lease) : null,
      task.blocker ? el("div", { class: "blocker" }, `blocked: ${task.blocker.type}: ${task.blocker.description}`) : null,
    );
  }

  function leaseText(until) {
    const left = Math.round(until - now());
    return left > 0 ? `lease ${left} s` : "lease expired";
  }

  function health(agent) {
    if (agent.seen_at === null || agent.seen_at === undefined) return agent.health;
    const quiet = now() - agent.seen_at;
    return quiet < state.healthy ? "green" : quiet < state.alive ? "yellow" : "red";
  }

  function renderAgents() {
    const books = new Map((state.report ? state.report.agents : []).map((book) => [book.agent, book]));
    const rows = state.agents.map((agent) => {
      const colour = health(agent);
      const book = books.get(agent.id);
      const working = [...state.tasks.values()].filter((t) => t.owner === agent.id && ["claimed", "in_progress", "blocked"].includes(t.state));
      return el("tr", { "data-agent": agent.id, class: colour },
        el("td", {}, agent.id.replace("if://agent/", "")),
        el("td", { class: "health" }, el("span", { class: "dot" }), colour),
        el("td", {}, agent.capabilities.join(", ")),
        el("td", {}, working.map((t) => t.id).join(", ")),
        el("td", {}, book ? book.spent_usd.toFixed(4) : ""),
        el("td", {}, book ? book.breaker : ""),
      );
    });
    $("#agents tbody").replaceChildren(...rows);
    renderMesh();
  }

  function renderMesh() {
    for (const [agent, seen] of state.mesh) {
      if (now() - seen.at > state.meshStale) state.mesh.delete(agent); // it left, or died
    }
    const rows = [];
    for (const [agent, seen] of [...state.mesh].sort()) {
      for (const link of seen.links) {
        const band = link.band || "unjudged";
        rows.push(el("tr", { "data-link": `${agent} ${link.peer}`, class: `band-${band}` },
          el("td", {}, agent.replace("if://agent/", "")),
          el("td", {}, link.peer.replace("if://agent/", "")),
          el("td", {}, link.relay ? "relay" : "direct"),
          el("td", { class: "health" }, el("span", { class: "dot" }), band),
          el("td", {}, typeof link.rtt_ms === "number" ? link.rtt_ms.toFixed(1) : ""),
          el("td", {}, typeof link.loss_percent === "number" ? `${link.loss_percent.toFixed(0)} %` : ""),
        ));
      }
    }
    $("#mesh").hidden = state.mesh.size === 0; // shown when there is a mesh
    $("#mesh-links tbody").replaceChildren(...rows);
  }

  function renderBudgets() {
    const rows = [];
    if (state.report) {
      for (const book of state.report.agents) rows.push(budgetRow(book.agent.replace("if://agent/", ""), book.spent_usd, book.budget_usd));
      for (const swarm of state.report.swarms) rows.push(budgetRow(`swarm ${swarm.swarm}`, swarm.spent_usd, swarm.budget_usd));
    }
    $("#budgets tbody").replaceChildren(...rows);
    drawSpend();
  }

  function budgetRow(name, spent, budget) {
    const left = budget === null ? "no limit" : `${Math.max(0, 100 * (1 - spent / budget)).toFixed(0)} %`;
    return el("tr", {}, el("td", {}, name), el("td", {}, spent.toFixed(4)), el("td", {}, budget === null ? "" : budget.toFixed(2)), el("td", {}, left));
  }

  function drawSpend() {
    const svg = $("#spend-chart");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const points = state.spend;
    if (points.length === 0) return;
    const [t0, t1] = [points[0][0], Math.max(points[points.length - 1][0], points[0][0] + 1)];
    const top = Math.max(...points.map((p) => p[1]), 0.0001);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(([t, v]) => `${20 + 560 * (t - t0) / (t1 - t0)},${180 - 160 * v / top}`).join(" "));
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "24");
    label.setAttribute("y", "16");
    label.textContent = `$${top.toFixed(4)} spent so far`;
    svg.append(line, label);
  }

  function renderEvents() {
    $("#events").replaceChildren(...state.events.map((event) => el("li", {},
      `${new Date(event.at * 1000).toISOString().slice(11, 19)} ${event.kind}`,
      event.task_id ? ` ${event.task_id}` : "",
      event.actor ? ` by ${event.actor.replace("if://agent/", "")}` : "",
      !event.actor && event.payload && event.payload.agent ? ` ${event.payload.agent.replace("if://agent/", "")}` : "",
      event.trace_id ? ` [trace ${event.trace_id}]` : "")));
  }

  // -- the witness -----------------------------------------------------------------------

  async function loadWitness() {
    try {
      const checkpoint = await api("/v1/witness/checkpoint");
      state.key = checkpoint.key;
      const time = (checkpoint.checkpoint.split("\n").find((l) => l.startsWith("time ")) || "").slice(5);
      $("#checkpoint").textContent = `Latest checkpoint: ${checkpoint.size} entries, signed ${time} by ${checkpoint.key.split("+")[0]}`;
      const start = Math.max(0, checkpoint.size - 20);
      const page = await api(`/v1/witness/entries?start=${start}&end=${checkpoint.size}`);
      $("#entries tbody").replaceChildren(...page.entries.reverse().map((found) => {
        const button = el("button", { "data-index": String(found.index) }, "verify");
        button.addEventListener("click", () => verify(found.index));
        // a damaged entry (bytes that are not a witness entry) comes with entry null
        const entry = found.entry || {};
        const event = found.damaged ? "DAMAGED: not a witness entry" : entry.event;
        return el("tr", {}, el("td", {}, String(found.index)), el("td", {}, event),
          el("td", {}, entry.actor || ""), el("td", {}, entry.task_id || ""), el("td", {}, button));
      }));
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin();
      $("#checkpoint").textContent = String(error);
    }
  }
  $("#witness-refresh").addEventListener("click", loadWitness);

  async function verify(index) {
    const verdict = $("#verdict");
    verdict.className = "";
    verdict.textContent = `checking entry ${index}...`;
    try {
      const bundle = await api(`/v1/witness/proof?index=${index}`);
      const checked = await window.IfabVerify.verifyBundle(bundle, state.key);
      verdict.className = "ok";
      verdict.textContent = `Verified in your browser: entry ${checked.index} (${checked.entry.event}) is in the log of ${checked.size} entries whose checkpoint ${state.key.split("+")[0]} signed at ${checked.time}.`;
    } catch (error) {
      verdict.className = "error";
      verdict.textContent = `Not verified: ${error.message}`;
    }
  }

  // -- time passing ----------------------------------------------------------------------

  setInterval(() => {
    for (const lease of document.querySelectorAll(".lease")) lease.textContent = leaseText(Number(lease.dataset.until));
    if (state.view === "agents") renderAgents();
  }, 1000);

  // -- start -------------------------------------------------------------------------------

  (async () => {
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.has("token")) {
      history.replaceState(null, "", location.pathname); // the token leaves the address bar
      try { await login(fragment.get("token")); } catch (error) { return showLogin(`Refused: ${error.message}`); }
    }
    try {
      await start();
    } catch (error) {
      if (error instanceof Unauthorized) showLogin();
      else { $("#failure").hidden = false; $("#failure").textContent = String(error); }
    }
  })();
})();
