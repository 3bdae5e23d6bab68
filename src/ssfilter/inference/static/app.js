// The inspection page of `ssfilter serve`: send images to predict?overlay=1 and show each result.
// Plain JavaScript, no external resources (the page must work on an offline factory network).
"use strict";

(function () {
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const drop = document.getElementById("drop");
  const pick = document.getElementById("pick");
  const template = document.getElementById("card");

  function setStatus(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
    status.dataset.state = isError ? "error" : text === "" ? "" : "busy";
  }

  function fixed(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : "-";
  }

  // Columns of the region table: [heading, function of a region -> text].
  const REGION_COLUMNS = [
    ["#", (r, i) => String(i + 1)],
    ["box (x0, y0)-(x1, y1)", (r) => "(" + r.x0 + ", " + r.y0 + ")-(" + r.x1 + ", " + r.y1 + ")"],
    ["area (px)", (r) => String(r.area)],
    ["area (%)", (r) => fixed(r.area_percent, 2)],
    ["peak", (r) => fixed(r.peak_score, 3)],
    ["mean", (r) => fixed(r.mean_score, 3)],
  ];

  function regionTable(regions) {
    const box = document.createElement("div");
    if (!Array.isArray(regions)) {
      return box; // a server without region support: nothing to show
    }
    if (regions.length === 0) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No defect region.";
      box.appendChild(p);
      return box;
    }
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const [title] of REGION_COLUMNS) {
      const th = document.createElement("th");
      th.textContent = title;
      head.appendChild(th);
    }
    const body = table.createTBody();
    regions.forEach((region, i) => {
      const row = body.insertRow();
      for (const [, cell] of REGION_COLUMNS) {
        row.insertCell().textContent = cell(region, i);
      }
    });
    box.appendChild(table);
    return box;
  }

  function card(record) {
    const node = template.content.firstElementChild.cloneNode(true);
    const label = node.querySelector(".label");
    label.textContent = record.label;
    label.classList.add(record.label === "NG" ? "NG" : "OK");
    node.dataset.label = record.label;
    node.querySelector(".name").textContent = record.path;
    node.querySelector(".score").textContent = fixed(record.score, 3) + " (NG from 0.500)";
    node.querySelector(".raw").textContent = fixed(record.raw_score, 5);
    node.querySelector(".threshold").textContent = fixed(record.threshold, 5);
    node.querySelector(".size").textContent = record.width + " x " + record.height + " px";
    const img = node.querySelector(".overlay");
    if (record.overlay) {
      img.src = record.overlay;
      img.alt = "heat-map overlay of " + record.path;
    } else {
      img.remove();
    }
    node.querySelector(".regions").appendChild(regionTable(record.regions));
    return node;
  }

  async function send(files) {
    const images = Array.from(files);
    if (images.length === 0) {
      return;
    }
    const form = new FormData();
    for (const file of images) {
      form.append("files", file, file.name);
    }
    setStatus("Inspecting " + images.length + " image(s)...", false);
    let answer;
    try {
      const response = await fetch("predict?overlay=1", { method: "POST", body: form });
      answer = await response.json();
      if (!response.ok) {
        setStatus("Refused: " + (answer.error || response.status), true);
        return;
      }
    } catch (err) {
      setStatus("The server did not answer: " + err, true);
      return;
    }
    results.replaceChildren(...answer.images.map(card));
    setStatus(answer.n_images + " image(s): " + answer.n_ng + " NG, " +
      (answer.n_images - answer.n_ng) + " OK", false);
    status.dataset.state = "done";
  }

  async function loadInfo() {
    const target = document.getElementById("model");
    try {
      const response = await fetch("info");
      const info = await response.json();
      target.textContent = "ssfilter " + info.version + " | backend " + info.backend + " | model " +
        info.source + " | raw threshold " + fixed(info.threshold, 5) + " | up to " +
        info.limits.max_images + " images per request";
    } catch (err) {
      target.textContent = "model information unavailable: " + err;
    }
  }

  pick.addEventListener("change", () => {
    send(pick.files);
    pick.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick.click();
    }
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    send(event.dataTransfer.files);
  });
  loadInfo();
})();
