// cityviz explanation map: a Streamlit (components.v1) component around a plotly.js scattergl.
//
// Protocol (no npm build): we post "streamlit:componentReady", Streamlit posts
// "streamlit:render" with the arguments (bytes arguments arrive as Uint8Array), and we post
// "streamlit:setComponentValue" (the selected test rows) and "streamlit:setFrameHeight".
// Hovering a point shows its thumbnails from the cache's sprite sheets entirely in this frame;
// nothing goes back to Python until the user selects points.
//
// Hover path (issue 10): plotly_hover (hoverinfo "none": no plotly label) -> the row's three
// sheets as decoded ImageBitmaps (fetched and decoded off the main thread by createImageBitmap,
// kept in a small LRU) -> three 96 px canvases drawn with drawImage (no <img> of a 1536 px sheet
// to lay out and decode at paint time) -> the record on the next animation frame. After the map
// is drawn, the sheets' bytes are prefetched into the browser's HTTP cache at low priority (up to
// PREFETCH_BYTES), so a later miss only decodes.
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
    bitmaps: new Map(),
    prefetched: new Set(),
    prefetchGen: 0,
    hoverToken: 0,
    tipSize: null,
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
    // lastHover / hovers[i]: {row, ms, pick, ready, fetched, decoded} -- ms: mousemove -> the
    // thumbnails drawn and the next animation frame; pick: mousemove -> plotly_hover; ready:
    // mousemove -> every sheet decoded; fetched: a sheet was neither decoded nor prefetched;
    // decoded: a sheet had to be decoded (not in the LRU).
    lastHover: null,
    hovers: [],
    prefetched: 0,
    atlasDrawn: 0,
    // the region of the last box / lasso: {range, lasso, n} (n: points inside it)
    lastRegion: null,
    // epoch milliseconds: script start, first render message, first plot drawn
    timing: { script: performance.timeOrigin + performance.now(), args: null, drawn: null },
    pointPixel: pointPixel,
    rowAt: function (i) { return state.rows ? state.rows[i] : null; },
  };
  window.cityviz = api;

  // The outlines of earlier selections are drawn as SVG paths that take pointer events even when
  // they are not editable: a box or lasso started inside one never reached plotly's drag layer,
  // so the old selection stayed (issue 13 §5). Let the mouse pass through them.
  const outlineStyle = document.createElement("style");
  outlineStyle.textContent = ".selectionlayer path, .outline-controllers * { pointer-events: none !important; }";
  document.head.appendChild(outlineStyle);

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
  // Names come from the data (city folders, CSV manifests, classes.json, cluster labels) and
  // plotly.js renders a subset of HTML in legends and annotations (<a href>, <b>, <br>, <img>
  // is dropped but links are live): every string handed to Plotly goes through plotlyText.
  // Text set with textContent (the hover caption) and canvas text (atlas labels) stay raw.
  const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function plotlyText(value) {
    return String(value).replace(/[&<>"']/g, function (c) { return HTML_ESCAPES[c]; });
  }

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
    const path = String(kind).split("/").map(encodeURIComponent).join("/");
    return state.thumbs.base + "/" + path + "/" + String(sheet).padStart(4, "0") + ".jpg";
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

  // Decoded sheets kept for hovers (RGBA: a 1536 px sheet is 9.4 MB), least recently used first.
  const DECODED_BYTES = 128 * 1024 * 1024;
  // Sheet bytes fetched ahead into the HTTP cache after the map is drawn (a 30 000-image cache
  // has ~350 sheets of 0.3-0.7 MB per model; beyond this budget the rest load on first hover).
  const PREFETCH_BYTES = 256 * 1024 * 1024;
  const PREFETCH_PARALLEL = 2;

  function decodedMax() {
    const side = state.thumbs.size * state.thumbs.per_row;
    return Math.max(6, Math.floor(DECODED_BYTES / (side * side * 4)));
  }

  // {bitmap, promise, fetched} for a sheet URL: decoded once, then kept in the LRU.
  function sheetBitmap(url) {
    let entry = state.bitmaps.get(url);
    if (entry) {
      state.bitmaps.delete(url);  // most recently used goes last
      state.bitmaps.set(url, entry);
      return entry;
    }
    entry = { bitmap: null, fetched: !state.prefetched.has(url), promise: null };
    entry.promise = fetch(url, { cache: "force-cache" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.blob();
      })
      .then(function (blob) { return createImageBitmap(blob); })
      .then(function (bitmap) {
        entry.bitmap = bitmap;
        evictBitmaps();
        return bitmap;
      });
    entry.promise.catch(function () {
      if (state.bitmaps.get(url) === entry) state.bitmaps.delete(url);
    });
    state.bitmaps.set(url, entry);
    return entry;
  }

  function evictBitmaps() {
    const max = decodedMax();
    for (const [url, entry] of state.bitmaps) {
      if (state.bitmaps.size <= max) break;
      if (!entry.bitmap) continue;  // still loading: a hover is waiting for it
      entry.bitmap.close();
      state.bitmaps.delete(url);
    }
  }

  // Fetch every sheet of the map's thumbnail kinds into the HTTP cache, a few at a time at low
  // priority, in sheet order. A new map (another model) starts over with its own kinds; hovers
  // fetch what is still missing themselves.
  function prefetchSheets() {
    if (!state.thumbs || !state.rows || !state.rows.length) return;
    const gen = ++state.prefetchGen;
    const perSheet = state.thumbs.per_row * state.thumbs.per_row;
    let maxRow = 0;
    for (let i = 0; i < state.rows.length; i++) if (state.rows[i] > maxRow) maxRow = state.rows[i];
    const urls = [];
    for (let sheet = 0; sheet <= Math.floor(maxRow / perSheet); sheet++) {
      for (const kind of state.thumbs.kinds) {
        const url = sheetUrl(kind[1], sheet);
        if (!state.prefetched.has(url)) urls.push(url);
      }
    }
    let next = 0;
    let bytes = 0;
    const worker = function () {
      if (gen !== state.prefetchGen || next >= urls.length || bytes >= PREFETCH_BYTES) return null;
      const url = urls[next++];
      return fetch(url, { cache: "force-cache", priority: "low" })
        .then(function (r) { return r.ok ? r.arrayBuffer() : null; })
        .then(function (buf) {
          if (buf) {
            bytes += buf.byteLength;
            state.prefetched.add(url);
            api.prefetched = state.prefetched.size;
          }
        })
        .catch(function () { return null; })
        .then(worker);
    };
    const start = function () {
      for (let i = 0; i < PREFETCH_PARALLEL; i++) worker();
    };
    if (window.requestIdleCallback) window.requestIdleCallback(start, { timeout: 2000 });
    else setTimeout(start, 500);
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
      editSelection: false,
    };
    statusEl.textContent = state.rows.length ? "" : "No points to show.";
    window.Plotly.react(plotDiv, traces, layout, config).then(function () {
      bindEvents();
      drawAtlas();
      prefetchSheets();
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
        name: plotlyText(color.title),
        marker: {
          size: size,
          opacity: opacity,
          color: typed(Float32Array, args.values),
          colorscale: color.colorscale,
          cmin: color.cmin,
          cmax: color.cmax,
          showscale: true,
          colorbar: { title: { text: plotlyText(color.title) }, thickness: 12, len: 0.6 },
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
        name: plotlyText(g.name) + " (" + idx.length + ")",
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
      // A map projection's x and y share one unit: keep it, the frame's shape notwithstanding.
      yaxis: Object.assign({}, axis, args.equal_aspect ? { scaleanchor: "x", scaleratio: 1 } : {}),
      plot_bgcolor: "#ffffff",
      paper_bgcolor: "rgba(0,0,0,0)",
      // In atlas mode the labels are drawn on the canvas, above the thumbnails.
      annotations: (args.atlas ? [] : args.labels || []).map(function (l) {
        return {
          x: l.x, y: l.y, text: plotlyText(l.text), showarrow: false,
          hovertext: (l.hover || []).map(plotlyText).join("<br>") || undefined,
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

  // ---- selections (issue 13 §5) --------------------------------------------------------------
  // A selection is the set of points inside the region the user has just drawn, computed here
  // from the region's data coordinates and every shown point's position, not from plotly's
  // per-trace point lists: those are per colour group (their indices change with the colouring)
  // and, after a redraw, could describe selection outlines kept from an earlier drawing. The
  // outlines are not editable (config.editSelection = false), so a drag that starts inside the
  // previous region draws a new region instead of moving the old one.
  function visiblePositions() {
    const data = plotDiv.data || [];
    const out = [];
    state.traceIdx.forEach(function (idx, k) {
      const vis = data[k] ? data[k].visible : true;
      if (vis === false || vis === "legendonly") return;
      for (let i = 0; i < idx.length; i++) out.push(idx[i]);
    });
    return out;
  }

  function insidePolygon(px, py, xs, ys) {
    let inside = false;
    for (let i = 0, j = xs.length - 1; i < xs.length; j = i++) {
      if ((ys[i] > py) !== (ys[j] > py) &&
          px < (xs[j] - xs[i]) * (py - ys[i]) / (ys[j] - ys[i]) + xs[i]) inside = !inside;
    }
    return inside;
  }

  // Test rows inside the event's region (box: e.range, lasso: e.lassoPoints), or null when the
  // event carries no region.
  function regionRows(e) {
    let test = null;
    if (e.range && e.range.x && e.range.y) {
      const x0 = Math.min(e.range.x[0], e.range.x[1]), x1 = Math.max(e.range.x[0], e.range.x[1]);
      const y0 = Math.min(e.range.y[0], e.range.y[1]), y1 = Math.max(e.range.y[0], e.range.y[1]);
      test = function (x, y) { return x >= x0 && x <= x1 && y >= y0 && y <= y1; };
    } else if (e.lassoPoints && e.lassoPoints.x && e.lassoPoints.x.length > 2) {
      const xs = e.lassoPoints.x.map(Number), ys = e.lassoPoints.y.map(Number);
      test = function (x, y) { return insidePolygon(x, y, xs, ys); };
    }
    if (test === null) return null;
    const rows = [];
    for (const pos of visiblePositions()) {
      if (test(state.x[pos], state.y[pos])) rows.push(state.rows[pos]);
    }
    api.lastRegion = { range: e.range || null, lasso: e.lassoPoints || null, n: rows.length };
    return rows;
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
      if (!e) return;
      const rows = regionRows(e);
      if (rows !== null) {
        sendSelection(rows);
      } else if (e.points) {
        sendSelection(e.points.map(rowOf).filter(function (r) { return r !== null; }));
      }
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
    window.addEventListener("resize", function () {
      state.tipSize = null;
      scheduleAtlas();
    });
    plotDiv.addEventListener("mouseleave", hideTip);
  }

  function onHover(e) {
    if (!e || !e.points || !e.points.length) return;
    const row = rowOf(e.points[0]);
    if (row === null) return;
    const now = performance.now();
    const start = state.lastMove && now - state.lastMove < 1000 ? state.lastMove : now;
    if (api.hoverRow === row && !tip.hidden) {  // the same point again: only follow the cursor
      placeTip(row, e.event);
      return;
    }
    api.hoverRow = row;
    showTip(row, e.event, start, now);
  }

  function hideTip() {
    tip.hidden = true;
    api.hoverRow = null;
    state.hoverToken += 1;
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

  // One canvas per thumbnail kind, built once per kinds/size (no DOM churn per hover).
  function ensureTiles(kinds, size) {
    const sig = size + "|" + kinds.map(function (k) { return k[0]; }).join("|");
    if (tipTiles.getAttribute("data-sig") === sig) return;
    tipTiles.setAttribute("data-sig", sig);
    tipTiles.textContent = "";
    kinds.forEach(function (kind) {
      const tile = document.createElement("div");
      tile.className = "cv-tile";
      const frame = document.createElement("div");
      frame.className = "cv-tile-frame";
      const c = document.createElement("canvas");
      c.setAttribute("data-testid", "cv-thumb");
      c.width = size;
      c.height = size;
      c.style.width = size + "px";
      c.style.height = size + "px";
      frame.appendChild(c);
      const label = document.createElement("div");
      label.textContent = kind[0];
      tile.appendChild(frame);
      tile.appendChild(label);
      tipTiles.appendChild(tile);
    });
    state.tipSize = null;
  }

  function showTip(row, mouse, start, pickedAt) {
    const token = ++state.hoverToken;
    tipCaption.textContent = caption(row);
    tip.setAttribute("data-row", String(row));
    tip.setAttribute("data-loaded", "0");
    const kinds = state.thumbs ? state.thumbs.kinds : [];
    ensureTiles(kinds, state.thumbs ? state.thumbs.size : 0);
    tip.hidden = false;
    placeTip(row, mouse);
    if (!state.thumbs) {
      finish(row, token, start, pickedAt, performance.now(), false, false);
      return;
    }
    const loc = tileLocation(row);
    const entries = kinds.map(function (kind) { return sheetBitmap(sheetUrl(kind[1], loc.sheet)); });
    const fetched = entries.some(function (e) { return !e.bitmap && e.fetched; });
    const decoded = entries.some(function (e) { return !e.bitmap; });
    const draw = function () {
      if (token !== state.hoverToken) return;
      const readyAt = performance.now();
      drawTiles(entries, loc);
      finish(row, token, start, pickedAt, readyAt, fetched, decoded);
    };
    if (!decoded) {
      draw();
      return;
    }
    clearTiles();
    Promise.all(entries.map(function (e) { return e.promise; })).then(draw, function () {
      if (token !== state.hoverToken) return;
      tipCaption.textContent = caption(row) + " · thumbnails unavailable";
      tip.setAttribute("data-loaded", "error");
    });
  }

  function clearTiles() {
    for (const tile of tipTiles.children) {
      const c = tile.firstChild.firstChild;
      c.getContext("2d").clearRect(0, 0, c.width, c.height);
      c.removeAttribute("data-sheet");
    }
  }

  function drawTiles(entries, loc) {
    const s = state.thumbs.size;
    entries.forEach(function (entry, i) {
      const c = tipTiles.children[i].firstChild.firstChild;
      const ctx = c.getContext("2d");
      ctx.drawImage(entry.bitmap, loc.x * s, loc.y * s, s, s, 0, 0, s, s);
      const url = sheetUrl(state.thumbs.kinds[i][1], loc.sheet);
      c.setAttribute("data-sheet", new URL(url, location.href).href);
      c.setAttribute("data-tile", loc.x + "," + loc.y);
    });
  }

  function finish(row, token, start, pickedAt, readyAt, fetched, decoded) {
    tip.setAttribute("data-loaded", "1");
    requestAnimationFrame(function () {
      if (token !== state.hoverToken) return;
      const rec = {
        row: row,
        ms: performance.now() - start,
        pick: pickedAt - start,
        ready: readyAt - start,
        fetched: fetched,
        decoded: decoded,
      };
      api.lastHover = rec;
      api.hovers.push(rec);
    });
  }

  // Beside the cursor, inside the frame. The tooltip's size is measured once per layout (one
  // forced layout), not on every hover.
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
    if (!state.tipSize) state.tipSize = { w: tip.offsetWidth, h: tip.offsetHeight };
    const w = state.tipSize.w;
    const h = state.tipSize.h;
    let left = cx + 16;
    let top = cy + 16;
    if (left + w > window.innerWidth - 4) left = Math.max(4, cx - w - 16);
    if (top + h > window.innerHeight - 4) top = Math.max(4, cy - h - 16);
    tip.style.transform = "translate(" + left + "px," + top + "px)";
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
