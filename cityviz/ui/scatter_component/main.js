// cityviz explanation map: a Streamlit (components.v1) component around a plotly.js scattergl.
//
// Protocol (no npm build): we post "streamlit:componentReady", Streamlit posts
// "streamlit:render" with the arguments (bytes arguments arrive as Uint8Array), and we post
// "streamlit:setComponentValue" (the selected test rows) and "streamlit:setFrameHeight".
// Hovering a point shows its thumbnails from the cache's sprite sheets entirely in this frame;
// nothing goes back to Python until the user selects points.
(function () {
  "use strict";

  const plotDiv = document.getElementById("cv-plot");
  const canvas = document.getElementById("cv-atlas");
  const statusEl = document.getElementById("cv-status");
  const tip = document.getElementById("cv-tip");
  const tipCaption = document.getElementById("cv-tip-caption");
  const tipTiles = document.getElementById("cv-tip-tiles");

  const state = {
    key: null,
    args: null,
    x: null,
    y: null,
    rows: null,
    posOfRow: new Map(),
    traceIdx: [],
    meta: null,
    thumbs: null,
    atlas: null,
    sheets: new Map(),
    bound: false,
    lastMove: 0,
    hoverStart: 0,
    drawQueued: false,
  };

  // Hooks for tests and benchmarks (read-only use).
  const api = {
    ready: false,
    renders: 0,
    nPoints: 0,
    hoverRow: null,
    lastHover: null,
    hovers: [],
    atlasDrawn: 0,
    // epoch milliseconds: script start, first render message, first plot drawn
    timing: { script: performance.timeOrigin + performance.now(), args: null, drawn: null },
    pointPixel: pointPixel,
    rowAt: function (i) { return state.rows ? state.rows[i] : null; },
  };
  window.cityviz = api;

  // ---- Streamlit protocol -------------------------------------------------------------------
  function send(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }
  function setValue(value) {
    send("streamlit:setComponentValue", { value: value, dataType: "json" });
  }
  function setHeight(h) {
    send("streamlit:setFrameHeight", { height: h });
  }
  let plotlyReady = null;
  function loadPlotly() {
    if (!plotlyReady) {
      plotlyReady = new Promise(function (resolve, reject) {
        const s = document.createElement("script");
        s.src = "plotly-gl2d.min.js";
        api.timing.plotly = performance.timeOrigin + performance.now();
        s.onload = function () {
          api.timing.plotlyLoaded = performance.timeOrigin + performance.now();
          resolve();
        };
        s.onerror = function () { reject(new Error("plotly-gl2d.min.js could not be loaded")); };
        document.head.appendChild(s);
      });
    }
    return plotlyReady;
  }
  // Start fetching and parsing plotly.js now, in parallel with Streamlit's script run, instead
  // of after the first map's data arrives (saves ~0.5 s on a fresh browser).
  loadPlotly();

  let latest = null;
  window.addEventListener("message", function (event) {
    if (!event.data || event.data.type !== "streamlit:render") return;
    latest = event.data.args;
    setHeight(latest.height);
    loadPlotly().then(function () {
      if (latest === null) return;
      const args = latest;
      latest = null;
      render(args);
    }).catch(function (err) {
      statusEl.textContent = "The map could not be drawn: " + err;
    });
  });

  // ---- data ---------------------------------------------------------------------------------
  function typed(Type, bytes) {
    if (!bytes) return null;
    const copy = bytes.slice();  // own, aligned buffer
    return new Type(copy.buffer, 0, copy.byteLength / Type.BYTES_PER_ELEMENT);
  }

  function thumbBase(name) {
    const path = window.location.pathname;
    const i = path.indexOf("/component/");
    return (i >= 0 ? path.slice(0, i) : "") + "/component/" + name;
  }

  function tileLocation(row) {
    const per = state.thumbs.per_row;
    const perSheet = per * per;
    const pos = row % perSheet;
    return { sheet: Math.floor(row / perSheet), x: pos % per, y: Math.floor(pos / per) };
  }

  function sheetUrl(kind, sheet) {
    return state.thumbs.base + "/" + kind + "/" + String(sheet).padStart(4, "0") + ".jpg";
  }

  function sheetImage(url) {
    let img = state.sheets.get(url);
    if (!img) {
      img = new Image();
      img.decoding = "async";
      img.onload = scheduleAtlas;
      img.src = url;
      state.sheets.set(url, img);
    }
    return img;
  }

  // ---- rendering ----------------------------------------------------------------------------
  function render(args) {
    if (api.timing.args === null) api.timing.args = performance.timeOrigin + performance.now();
    if (args.data_key === state.key) return;
    state.key = args.data_key;
    state.args = args;
    state.x = typed(Float32Array, args.x);
    state.y = typed(Float32Array, args.y);
    state.rows = typed(Int32Array, args.rows);
    state.meta = args.meta || {};
    state.info = {
      city: typed(Int32Array, args.city),
      pred: typed(Int32Array, args.pred),
      conf: typed(Float32Array, args.conf),
      cluster: typed(Int32Array, args.cluster),
    };
    state.posOfRow = new Map();
    for (let i = 0; i < state.rows.length; i++) state.posOfRow.set(state.rows[i], i);
    state.thumbs = args.thumbs ? Object.assign({}, args.thumbs, { base: thumbBase(args.thumbs.component) }) : null;
    state.atlas = args.atlas ? { rows: args.atlas.rows, kind: args.atlas.kind, size: args.atlas.size } : null;
    api.nPoints = state.rows.length;
    api.ready = false;

    const traces = buildTraces(args);
    const layout = buildLayout(args, traces.length);
    const config = {
      displaylogo: false,
      responsive: true,
      scrollZoom: true,
      modeBarButtonsToRemove: ["autoScale2d"],
    };
    statusEl.textContent = state.rows.length ? "" : "No points to show.";
    window.Plotly.react(plotDiv, traces, layout, config).then(function () {
      bindEvents();
      drawAtlas();
      api.ready = true;
      api.renders += 1;
      if (api.timing.drawn === null) api.timing.drawn = performance.timeOrigin + performance.now();
    });
  }

  function markerSize(n) {
    if (n > 10000) return 3;
    if (n > 2000) return 4;
    return 6;
  }

  function subset(arr, idx) {
    const out = new Float32Array(idx.length);
    for (let i = 0; i < idx.length; i++) out[i] = arr[idx[i]];
    return out;
  }

  function buildTraces(args) {
    const n = state.rows.length;
    const size = markerSize(n);
    const opacity = state.atlas ? 0.25 : 0.8;
    const base = {
      type: "scattergl",
      mode: "markers",
      hoverinfo: "none",
      unselected: { marker: { opacity: 0.12 } },
    };
    state.traceIdx = [];
    const color = args.color;
    if (color.mode === "continuous") {
      const all = new Int32Array(n);
      for (let i = 0; i < n; i++) all[i] = i;
      state.traceIdx.push(all);
      return withSelection([Object.assign({}, base, {
        x: state.x,
        y: state.y,
        name: color.title,
        marker: {
          size: size,
          opacity: opacity,
          color: typed(Float32Array, args.values),
          colorscale: color.colorscale,
          cmin: color.cmin,
          cmax: color.cmax,
          showscale: true,
          colorbar: { title: { text: color.title }, thickness: 12, len: 0.6 },
        },
      })], args.selected);
    }
    const codes = typed(Int32Array, args.codes);
    const buckets = color.groups.map(function () { return []; });
    for (let i = 0; i < n; i++) buckets[codes[i]].push(i);
    return withSelection(color.groups.map(function (g, k) {
      const idx = Int32Array.from(buckets[k]);
      state.traceIdx.push(idx);
      return Object.assign({}, base, {
        x: subset(state.x, idx),
        y: subset(state.y, idx),
        name: g.name + " (" + idx.length + ")",
        marker: { size: size, opacity: opacity, color: g.color },
      });
    }), args.selected);
  }

  // Keep a selection made before a redraw (e.g. a new colouring) visible.
  function withSelection(traces, selected) {
    if (!selected || !selected.length) return traces;
    const chosen = new Set(selected);
    traces.forEach(function (t, k) {
      const idx = state.traceIdx[k];
      const pts = [];
      for (let i = 0; i < idx.length; i++) if (chosen.has(state.rows[idx[i]])) pts.push(i);
      t.selectedpoints = pts;
    });
    return traces;
  }

  function buildLayout(args, nTraces) {
    const axis = { showticklabels: false, showgrid: false, zeroline: false, title: { text: "" } };
    return {
      height: args.height,
      margin: { l: 8, r: 8, t: 36, b: 8 },
      dragmode: args.dragmode || "zoom",
      hovermode: "closest",
      uirevision: args.view_key,
      showlegend: args.color.mode !== "continuous" && nTraces > 0,
      legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", itemsizing: "constant" },
      xaxis: axis,
      yaxis: Object.assign({}, axis),
      plot_bgcolor: "#ffffff",
      paper_bgcolor: "rgba(0,0,0,0)",
      // In atlas mode the labels are drawn on the canvas, above the thumbnails.
      annotations: (args.atlas ? [] : args.labels || []).map(function (l) {
        return {
          x: l.x, y: l.y, text: l.text, showarrow: false,
          font: { size: 12, color: "#1b1b1b" },
          bgcolor: "rgba(255,255,255,0.82)", bordercolor: "#9a9a9a", borderpad: 2,
        };
      }),
    };
  }

  // ---- events -------------------------------------------------------------------------------
  function rowOf(point) {
    const idx = state.traceIdx[point.curveNumber];
    if (!idx) return null;
    return state.rows[idx[point.pointIndex]];
  }

  function sendSelection(rows) {
    const uniq = Array.from(new Set(rows)).sort(function (a, b) { return a - b; });
    setValue({ rows: uniq, view: state.args.view_key });
  }

  function bindEvents() {
    if (state.bound) return;
    state.bound = true;
    document.addEventListener("mousemove", function () { state.lastMove = performance.now(); }, true);
    plotDiv.on("plotly_hover", onHover);
    plotDiv.on("plotly_unhover", hideTip);
    plotDiv.on("plotly_selected", function (e) {
      if (!e || !e.points) return;
      sendSelection(e.points.map(rowOf).filter(function (r) { return r !== null; }));
    });
    plotDiv.on("plotly_deselect", function () { sendSelection([]); });
    plotDiv.on("plotly_click", function (e) {
      const mode = plotDiv._fullLayout.dragmode;
      if (!e || !e.points || !e.points.length || mode === "select" || mode === "lasso") return;
      const row = rowOf(e.points[0]);
      if (row !== null) sendSelection([row]);
    });
    plotDiv.on("plotly_relayout", function () { hideTip(); scheduleAtlas(); });
    plotDiv.on("plotly_relayouting", scheduleAtlas);
    window.addEventListener("resize", scheduleAtlas);
    plotDiv.addEventListener("mouseleave", hideTip);
  }

  function onHover(e) {
    if (!e || !e.points || !e.points.length) return;
    const row = rowOf(e.points[0]);
    if (row === null) return;
    const start = state.lastMove && performance.now() - state.lastMove < 1000 ? state.lastMove : performance.now();
    api.hoverRow = row;
    showTip(row, e.event, start);
  }

  function hideTip() {
    tip.hidden = true;
    api.hoverRow = null;
  }

  function caption(row) {
    const pos = state.posOfRow.get(row);
    const m = state.meta;
    const info = state.info;
    const parts = [];
    if (info.city && m.cities) {
      let text = m.cities[info.city[pos]];
      if (info.pred) {
        const ok = info.pred[pos] === info.city[pos];
        text += ok ? " ✓" : " → predicted " + m.cities[info.pred[pos]];
      }
      if (info.conf) text += " (" + Math.round(info.conf[pos] * 100) + " %)";
      parts.push(text);
    }
    if (info.cluster && m.clusters && info.cluster[pos] >= 0) parts.push(m.clusters[info.cluster[pos]]);
    return parts.join(" · ");
  }

  function ensureTiles(n, size) {
    while (tipTiles.children.length < n) {
      const tile = document.createElement("div");
      tile.className = "cv-tile";
      const frame = document.createElement("div");
      frame.className = "cv-tile-frame";
      const img = document.createElement("img");
      img.alt = "";
      img.setAttribute("data-testid", "cv-thumb");
      frame.appendChild(img);
      const label = document.createElement("div");
      tile.appendChild(frame);
      tile.appendChild(label);
      tipTiles.appendChild(tile);
    }
    while (tipTiles.children.length > n) tipTiles.removeChild(tipTiles.lastChild);
    for (const tile of tipTiles.children) {
      tile.firstChild.style.width = size + "px";
      tile.firstChild.style.height = size + "px";
    }
  }

  function showTip(row, mouse, start) {
    tipCaption.textContent = caption(row);
    tip.setAttribute("data-row", String(row));
    const kinds = state.thumbs ? state.thumbs.kinds : [];
    ensureTiles(kinds.length, state.thumbs ? state.thumbs.size : 0);
    let pending = 0;
    const done = function () {
      pending -= 1;
      if (pending === 0) finish();
    };
    const finish = function () {
      if (api.hoverRow !== row) return;
      tip.setAttribute("data-loaded", "1");
      requestAnimationFrame(function () {
        const rec = { row: row, ms: performance.now() - start };
        api.lastHover = rec;
        api.hovers.push(rec);
      });
    };
    tip.setAttribute("data-loaded", "0");
    if (state.thumbs) {
      const loc = tileLocation(row);
      const s = state.thumbs.size;
      kinds.forEach(function (kind, i) {
        const tile = tipTiles.children[i];
        const img = tile.firstChild.firstChild;
        tile.lastChild.textContent = kind[0];
        tile.setAttribute("data-row", String(row));
        img.style.left = -loc.x * s + "px";
        img.style.top = -loc.y * s + "px";
        const url = sheetUrl(kind[1], loc.sheet);
        if (img.getAttribute("src") !== url) {
          pending += 1;
          img.onload = done;
          img.onerror = done;
          img.src = url;
        } else if (!img.complete) {
          pending += 1;
          img.onload = done;
        }
      });
    }
    tip.hidden = false;
    placeTip(row, mouse);
    if (pending === 0) finish();
  }

  function placeTip(row, mouse) {
    let cx, cy;
    if (mouse && typeof mouse.clientX === "number") {
      cx = mouse.clientX;
      cy = mouse.clientY;
    } else {
      const p = pointPixel(row) || { x: 0, y: 0 };
      cx = p.x;
      cy = p.y;
    }
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    let left = cx + 16;
    let top = cy + 16;
    if (left + w > window.innerWidth - 4) left = Math.max(4, cx - w - 16);
    if (top + h > window.innerHeight - 4) top = Math.max(4, cy - h - 16);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  // Client (viewport) coordinates of a test row's point, or null when it is not on screen.
  function pointPixel(row) {
    const fl = plotDiv._fullLayout;
    const pos = state.posOfRow.get(row);
    if (!fl || pos === undefined) return null;
    const xa = fl.xaxis;
    const ya = fl.yaxis;
    const px = xa._offset + xa.l2p(state.x[pos]);
    const py = ya._offset + ya.l2p(state.y[pos]);
    if (px < xa._offset || px > xa._offset + xa._length || py < ya._offset || py > ya._offset + ya._length) {
      return null;
    }
    const rect = plotDiv.getBoundingClientRect();
    return { x: rect.left + px, y: rect.top + py };
  }

  // ---- atlas --------------------------------------------------------------------------------
  function scheduleAtlas() {
    if (state.drawQueued) return;
    state.drawQueued = true;
    requestAnimationFrame(function () {
      state.drawQueued = false;
      drawAtlas();
    });
  }

  function drawAtlas() {
    const dpr = window.devicePixelRatio || 1;
    const w = plotDiv.clientWidth;
    const h = plotDiv.clientHeight;
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const fl = plotDiv._fullLayout;
    if (!state.atlas || !state.thumbs || !fl || !fl.xaxis) return;
    const xa = fl.xaxis;
    const ya = fl.yaxis;
    ctx.save();
    ctx.beginPath();
    ctx.rect(xa._offset, ya._offset, xa._length, ya._length);
    ctx.clip();
    const s = state.thumbs.size;
    const d = state.atlas.size;
    let drawn = 0;
    for (const row of state.atlas.rows) {
      const pos = state.posOfRow.get(row);
      if (pos === undefined) continue;
      const px = xa._offset + xa.l2p(state.x[pos]);
      const py = ya._offset + ya.l2p(state.y[pos]);
      if (px < xa._offset - d || px > xa._offset + xa._length + d) continue;
      if (py < ya._offset - d || py > ya._offset + ya._length + d) continue;
      const loc = tileLocation(row);
      const img = sheetImage(sheetUrl(state.atlas.kind, loc.sheet));
      if (!img.complete || !img.naturalWidth) continue;
      ctx.drawImage(img, loc.x * s, loc.y * s, s, s, px - d / 2, py - d / 2, d, d);
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.lineWidth = 1;
      ctx.strokeRect(px - d / 2, py - d / 2, d, d);
      drawn += 1;
    }
    drawLabels(ctx, xa, ya);
    ctx.restore();
    api.atlasDrawn = drawn;
  }

  function drawLabels(ctx, xa, ya) {
    ctx.font = "12px sans-serif";
    ctx.textBaseline = "middle";
    for (const l of state.args.labels || []) {
      const px = xa._offset + xa.l2p(l.x);
      const py = ya._offset + ya.l2p(l.y);
      const w = ctx.measureText(l.text).width + 8;
      ctx.fillStyle = "rgba(255,255,255,0.9)";
      ctx.fillRect(px - w / 2, py - 9, w, 18);
      ctx.strokeStyle = "#9a9a9a";
      ctx.strokeRect(px - w / 2, py - 9, w, 18);
      ctx.fillStyle = "#1b1b1b";
      ctx.fillText(l.text, px - w / 2 + 4, py);
    }
  }

  send("streamlit:componentReady", { apiVersion: 1 });
})();
