// The metadata panel: the role's view of the room's DICOM context, read at a glance.
//
// Input: the edge's `metadata` DataChannel messages, {"type": "metadata", "room", "source",
// "stream", "view", "capture_ns", "published_ns", "dataset": <DICOM JSON (PS3.18 F.2)>}. The
// dataset is already the role's view (identified, de-identified per PS3.15 Annex E, or
// technical): this module only presents it. It shows ONLY attributes that are present with a
// value. An attribute a de-identified view emptied, or filled with the engine's dummy value
// (ANONYMOUS, 19000101, 000000, ...), gets no row: no placeholder hints at what was there.
//
// Values come from patient records: they reach the DOM through textContent only. Formats: names
// "Family, Given Middle", dates 2026-11-21, times 08:15:02, ages "62 years", sex in words, sizes
// with their units; several values joined by ", " (names by "; "); a sequence as its Code
// Meanings or its count of items, except the Current Frame Functional Groups, whose Frame
// Content is shown row by row under Stream; InlineBinary and BulkDataURI never.
//
// API:
//   new MetadataPanel(element, dictionary)  element: an empty container (e.g. <aside>);
//                                           dictionary: {"00100010": "Patient's Name", ...}
//                                           (/dicom-dictionary.json; {} falls back to tags)
//   panel.show(message)   the message (parsed, or its JSON text); true when it changed anything
//                         (drawn at once, or within a quarter of a second)
//   panel.clear()         forget every context and empty the container
//   describe(dataset, dictionary) → [{id, title, collapsed, rows: [{key, label, value}]}]
//
// One card per context (source, stream), the newest context on top; a card keeps its place
// while its dataset changes. A card re-renders only when its dataset's JSON changed, and at
// most four times a second (the context can come with every frame); rows whose labels did not
// change are updated in place, so an opened <details> stays open.
//
// Markup and class names (the styling lives in the app's stylesheet):
//   article.md-card                 one context; data-source, data-stream attributes; hidden
//                                   while its view has nothing to show
//     p.md-caption                  what this is:
//       span.md-view                  the role's view, also .md-view-identified,
//                                     .md-view-deidentified, .md-view-technical or .md-view-other
//       span.md-origin                stream and source ("main · DICOM-RTV")
//     section.md-section            one per non-empty section, also .md-section-<id> with id one
//                                   of patient, procedure, equipment, institution, stream, other
//       h3.md-section-title
//       dl.md-rows
//         div.md-row > dt.md-label + dd.md-value
//     details.md-details            collapsed: UIDs, character set, de-identification marks
//       summary.md-details-summary  "Identifiers"
//       dl.md-rows > div.md-row > dt.md-label + dd.md-value

const MIN_INTERVAL_MS = 250;
const MAX_CONTEXTS = 16;

const PATIENT_IDENTITY_REMOVED = "00120062";
const CURRENT_FRAME_FUNCTIONAL_GROUPS = "00060001";
const FRAME_CONTENT = "00209111";
const SOP_CLASS_UID = "00080016";
const CODE_MEANING = "00080104";

// The de-identification engine's dummy values (orstream.metadata.deid.DUMMIES): in a dataset
// marked Patient Identity Removed they stand for a value that was taken away.
const TEXT_DUMMY = "ANONYMOUS";
const DUMMIES = { DA: "19000101", DT: "19000101000000", TM: "000000", AS: "000Y" };
const TEXT_VRS = new Set(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"]);

const SEX = { F: "Female", M: "Male", O: "Other" };
const AGE_UNITS = {
  Y: ["year", "years"], M: ["month", "months"], W: ["week", "weeks"], D: ["day", "days"],
};
const MODALITIES = {
  ES: "Endoscopy", XC: "External-camera photography", GM: "General microscopy",
  SM: "Slide microscopy", US: "Ultrasound", XA: "X-ray angiography", RF: "Radiofluoroscopy",
  OP: "Ophthalmic photography", DX: "Digital radiography", CT: "CT", MR: "MR",
};
const SOP_CLASSES = {
  "1.2.840.10008.10.1": "Video Endoscopic Image Real-Time Communication",
  "1.2.840.10008.10.2": "Video Photographic Image Real-Time Communication",
  "1.2.840.10008.10.3": "Audio Waveform Real-Time Communication",
  "1.2.840.10008.10.4": "Rendition Selection Document Real-Time Communication",
  "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
  "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image Storage",
  "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image Storage",
};
const UNITS = {
  "00101020": "m", "00101030": "kg", "00181063": "ms", "00180040": "frames/s",
  "00082144": "frames/s", "00189220": "ms",
};
const YES_NO = { "00": "No", "01": "Yes" };

// Each section: [tag, label] rows in reading order, or [[dateTag, timeTag], label] for a date
// and time shown as one row (alone, either keeps the label).
const PATIENT = [
  ["00100010", "Name"], ["00100020", "ID"], ["00100021", "ID issuer"],
  ["00100030", "Birth date"], ["00100040", "Sex"], ["00101010", "Age"],
  ["00101020", "Height"], ["00101030", "Weight"], ["00102000", "Medical alerts"],
  ["00102110", "Allergies"], ["001021B0", "History"], ["00104000", "Comments"],
];
const PROCEDURE = [
  ["00081030", "Study"], ["00321060", "Requested procedure"],
  ["00400254", "Performed procedure step"], ["00400007", "Scheduled procedure step"],
  ["0008103E", "Series"], ["00181030", "Protocol"], ["00080050", "Accession number"],
  [["00080020", "00080030"], "Study date"], ["00200010", "Study ID"],
  ["00401001", "Requested procedure ID"],
  [["00400244", "00400245"], "Procedure step start"], ["00400253", "Procedure step ID"],
  ["00081050", "Performing physician"], ["00080090", "Referring physician"],
  ["00321032", "Requesting physician"], ["00321033", "Requesting service"],
  ["00081060", "Reading physician"], ["00081070", "Operators"],
];
const EQUIPMENT = [
  ["00080070", "Manufacturer"], ["00081090", "Model"], ["00081010", "Station"],
  ["00181000", "Serial number"], ["00181020", "Software"],
];
const INSTITUTION = [
  ["00080080", "Name"], ["00081040", "Department"], ["00080081", "Address"],
  ["00080082", "Institution code"], ["00081041", "Department type"],
];
const STREAM = [
  ["00080060", "Modality"], [SOP_CLASS_UID, "SOP class"],
  [["00080023", "00080033"], "Content time"],
  ["00280008", "Number of frames"], ["00180040", "Cine rate"], ["00181063", "Frame interval"],
  ["00082144", "Display frame rate"], ["00280004", "Photometric interpretation"],
  ["00280002", "Samples per pixel"], ["00280100", "Bits allocated"], ["00280101", "Bits stored"],
  ["00282110", "Lossy compression"],
];
const FRAME_CONTENT_LABELS = {
  "00209156": "Frame number", "00189151": "Frame time", "00189074": "Frame acquired",
  "00189220": "Frame duration",
};
// Shown only under the collapsed Identifiers, whatever their VR.
const IDENTIFIER_TAGS = new Set(["00080005", "00280303"]);

/** table[key] when the table itself has it (data never reaches Object.prototype's members). */
function own(table, key) {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

/** "(0010,0010)" for "00100010". */
function tagText(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

function nameOf(tag, dictionary) {
  const name = own(dictionary, tag);
  return typeof name === "string" && name ? name : tagText(tag);
}

function plural(n, [one, many]) {
  return `${n} ${n === 1 ? one : many}`;
}

function formatDate(s) {
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(s);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : s;
}

function formatTime(s) {
  if (s.includes(":")) return s.split(".")[0];
  const m = /^(\d{2})(\d{2})?(\d{2})?(\.\d*)?$/.exec(s);
  if (!m) return s;
  return [m[1], m[2], m[3]].filter((part) => part !== undefined).join(":");
}

function formatDateTime(s) {
  const m = /^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d*)?([+-]\d{4})?$/.exec(s);
  if (!m) return s;
  const [, year, month, day, hour, minute, second, , offset] = m;
  let out = [year, month, day].filter((part) => part !== undefined).join("-");
  if (hour !== undefined) {
    out += " " + [hour, minute, second].filter((part) => part !== undefined).join(":");
  }
  if (offset !== undefined) out += ` UTC${offset.slice(0, 3)}:${offset.slice(3)}`;
  return out;
}

function formatAge(s) {
  const m = /^(\d{3})([DWMY])$/.exec(s);
  return m ? plural(Number(m[1]), own(AGE_UNITS, m[2])) : s;
}

/** "Rivera, Maria Elena" for "Rivera^Maria^Elena" (family, given middle; prefix, suffix). */
function formatName(text) {
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] =
    text.split("^").map((part) => part.trim());
  const rest = [prefix, given, middle].filter(Boolean).join(" ");
  let out = family && rest ? `${family}, ${rest}` : family || rest;
  if (suffix) out = out ? `${out}, ${suffix}` : suffix;
  return out;
}

function isDummy(vr, raw) {
  if (TEXT_VRS.has(vr)) return raw.toUpperCase() === TEXT_DUMMY;
  return own(DUMMIES, vr) === raw;
}

/** The raw text of one value, or "" (PN: its first non-empty representation). */
function rawText(vr, value) {
  if (value === null || value === undefined) return "";
  if (vr === "PN") {
    if (typeof value === "string") return value.trim();
    if (typeof value !== "object") return "";
    const text = [value.Alphabetic, value.Ideographic, value.Phonetic]
      .find((v) => typeof v === "string" && v.replaceAll("^", "").trim());
    return text ? text.trim() : "";
  }
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  if (typeof value === "string") return value.trim();
  return "";
}

function formatOne(tag, vr, raw) {
  switch (vr) {
    case "PN": return formatName(raw);
    case "DA": return formatDate(raw);
    case "TM": return formatTime(raw);
    case "DT": return formatDateTime(raw);
    case "AS": return formatAge(raw);
    case "AT": return /^[0-9A-Fa-f]{8}$/.test(raw) ? tagText(raw.toUpperCase()) : raw;
    default: break;
  }
  if (tag === "00100040") return own(SEX, raw.toUpperCase()) ?? raw;
  if (tag === "00080060") {
    const modality = own(MODALITIES, raw);
    return modality ? `${modality} (${raw})` : raw;
  }
  if (tag === SOP_CLASS_UID) return own(SOP_CLASSES, raw) ?? raw;
  if (tag === "00282110") return own(YES_NO, raw) ?? raw;
  const unit = own(UNITS, tag);
  return unit ? `${raw} ${unit}` : raw;
}

/** Multiple values joined by ", "; names by "; " (a formatted name holds a comma itself). */
function join(element, values) {
  return values.join(element.vr === "PN" ? "; " : ", ");
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The items of a sequence that hold at least one attribute. */
function items(element) {
  const value = Array.isArray(element.Value) ? element.Value : [];
  return value.filter((item) => isObject(item) && Object.keys(item).length > 0);
}

/** Code Meanings of a code sequence, or [] when its items are not codes. */
function codeMeanings(element, hidden) {
  const found = [];
  for (const item of items(element)) {
    const code = item[CODE_MEANING];
    const meaning = isObject(code) ? texts(CODE_MEANING, code, hidden) : [];
    if (!meaning.length) return [];
    found.push(...meaning);
  }
  return found;
}

/** The displayable values of one attribute: formatted, without empty or dummy values. */
function texts(tag, element, hidden) {
  const vr = typeof element.vr === "string" ? element.vr : "";
  if (vr === "SQ") {
    const meanings = codeMeanings(element, hidden);
    if (meanings.length) return meanings;
    const n = items(element).length;
    return n ? [plural(n, ["item", "items"])] : [];
  }
  // InlineBinary and BulkDataURI carry no Value: they are never shown.
  if (!Array.isArray(element.Value)) return [];
  const out = [];
  for (const value of element.Value) {
    const raw = rawText(vr, value);
    if (!raw || (hidden && isDummy(vr, raw))) continue;
    const text = formatOne(tag, vr, raw);
    if (text) out.push(text);
  }
  return out;
}

/** The dataset's attributes by upper-case tag, invalid keys and non-objects left out. */
function attributes(dataset) {
  const out = new Map();
  if (!isObject(dataset)) return out;
  for (const [key, element] of Object.entries(dataset)) {
    if (!/^[0-9A-Fa-f]{8}$/.test(key) || !isObject(element)) continue;
    const tag = key.toUpperCase();
    if (tag.endsWith("0000")) continue; // group lengths
    out.set(tag, element);
  }
  return out;
}

/**
 * The dataset as sections of rows, in reading order: Patient, Procedure, Equipment, Institution,
 * Stream, Other, then the collapsed Identifiers. Only non-empty rows and sections.
 */
export function describe(dataset, dictionary) {
  const dict = isObject(dictionary) ? dictionary : {};
  const attrs = attributes(dataset);
  const removed = attrs.get(PATIENT_IDENTITY_REMOVED);
  const hidden = !!removed && texts(PATIENT_IDENTITY_REMOVED, removed, false)
    .some((v) => v.toUpperCase() === "YES");
  const used = new Set();
  const value = (tag) => {
    used.add(tag);
    const element = attrs.get(tag);
    return element ? join(element, texts(tag, element, hidden)) : "";
  };
  const rowsOf = (spec) => {
    const rows = [];
    for (const [tags, label] of spec) {
      if (Array.isArray(tags)) {
        const text = tags.map(value).filter(Boolean).join(" ");
        if (text) rows.push({ key: tags.join("+"), label, value: text });
      } else {
        const text = value(tags);
        if (text) rows.push({ key: tags, label, value: text });
      }
    }
    return rows;
  };
  const rest = (rows, test) => {
    for (const tag of [...attrs.keys()].sort()) {
      if (used.has(tag) || !test(tag)) continue;
      const text = value(tag);
      if (text) rows.push({ key: tag, label: nameOf(tag, dict), value: text });
    }
    return rows;
  };
  const isUid = (tag) => attrs.get(tag).vr === "UI";

  const patient = rest(rowsOf(PATIENT), (tag) => tag.startsWith("0010") && !isUid(tag));
  const procedure = rowsOf(PROCEDURE);
  const equipment = rowsOf(EQUIPMENT);
  const institution = rowsOf(INSTITUTION);
  const stream = streamRows(attrs, dict, hidden, used, value, rowsOf);
  const identifiers = rest(
    [], (tag) => isUid(tag) || IDENTIFIER_TAGS.has(tag) || tag.startsWith("0012"),
  );
  const other = rest([], () => true);

  const sections = [
    { id: "patient", title: "Patient", collapsed: false, rows: patient },
    { id: "procedure", title: "Procedure", collapsed: false, rows: procedure },
    { id: "equipment", title: "Equipment", collapsed: false, rows: equipment },
    { id: "institution", title: "Institution", collapsed: false, rows: institution },
    { id: "stream", title: "Stream", collapsed: false, rows: stream },
    { id: "other", title: "Other", collapsed: false, rows: other },
    { id: "identifiers", title: "Identifiers", collapsed: true, rows: identifiers },
  ];
  return sections.filter((section) => section.rows.length > 0);
}

function streamRows(attrs, dict, hidden, used, value, rowsOf) {
  const rows = [];
  const columns = value("00280011"), lines = value("00280010");
  if (columns && lines) {
    rows.push({ key: "00280011+00280010", label: "Picture size", value: `${columns} × ${lines}` });
  } else if (columns) {
    rows.push({ key: "00280011", label: "Columns", value: columns });
  } else if (lines) {
    rows.push({ key: "00280010", label: "Rows", value: lines });
  }

  // The Current Frame Functional Groups: the Frame Content's attributes as rows of their own,
  // any other functional group in it by name (a sequence as its count).
  const groups = attrs.get(CURRENT_FRAME_FUNCTIONAL_GROUPS);
  used.add(CURRENT_FRAME_FUNCTIONAL_GROUPS);
  const [group] = groups && groups.vr === "SQ" ? items(groups) : [];
  for (const [key, element] of attributes(group)) {
    const path = `${CURRENT_FRAME_FUNCTIONAL_GROUPS}.${key}`;
    if (key === FRAME_CONTENT && element.vr === "SQ") {
      const [content] = items(element);
      for (const [tag, inner] of attributes(content)) {
        const text = join(inner, texts(tag, inner, hidden));
        const label = own(FRAME_CONTENT_LABELS, tag) ?? nameOf(tag, dict);
        if (text) rows.push({ key: `${path}.${tag}`, label, value: text });
      }
    } else if (element.vr !== "UI") {
      const text = join(element, texts(key, element, hidden));
      if (text) rows.push({ key: path, label: nameOf(key, dict), value: text });
    }
  }

  // The SOP class by name; one without a name goes with the UIDs.
  const sopClass = attrs.get(SOP_CLASS_UID);
  const sopClassNamed = !!sopClass && Array.isArray(sopClass.Value) && sopClass.Value.length > 0
    && sopClass.Value.every((uid) => typeof uid === "string" && own(SOP_CLASSES, uid.trim()));
  rows.push(...rowsOf(STREAM.filter(([tags]) => tags !== SOP_CLASS_UID || sopClassNamed)));
  return rows;
}

function viewCaption(view) {
  if (view === "identified") return ["Identified", "identified"];
  if (view === "technical") return ["Technical", "technical"];
  if (view.startsWith("basic")) return [`De-identified (${view})`, "deidentified"];
  return [view, "other"];
}

const SOURCES = { rtv: "DICOM-RTV", worklist: "worklist", file: "file", rest: "hospital system" };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function rowElement(row, cells) {
  const div = element("div", "md-row");
  const dd = element("dd", "md-value", row.value);
  div.append(element("dt", "md-label", row.label), dd);
  cells.set(row.key, dd);
  return div;
}

export class MetadataPanel {
  #element;
  #dictionary;
  #contexts = new Map(); // "source\0stream" → its newest dataset and its card
  #arrivals = 0;
  #lastRender = -Infinity;
  #timer = null;

  constructor(element, dictionary) {
    this.#element = element;
    this.#dictionary = isObject(dictionary) ? dictionary : {};
  }

  /** Takes one metadata message; true when it changed a context (drawn now or shortly). */
  show(message) {
    let msg = message;
    if (typeof msg === "string") {
      try { msg = JSON.parse(msg); } catch { return false; }
    }
    if (!isObject(msg) || !isObject(msg.dataset)) return false;
    if (msg.type !== undefined && msg.type !== "metadata") return false;
    const source = typeof msg.source === "string" ? msg.source : "";
    const stream = typeof msg.stream === "string" ? msg.stream : "";
    const view = typeof msg.view === "string" ? msg.view : "";
    const json = JSON.stringify(msg.dataset);
    const key = `${source}\u0000${stream}`;
    let context = this.#contexts.get(key);
    if (context && context.json === json && context.view === view) return false;
    if (!context) {
      context = { source, stream, card: null, signature: "", cells: new Map() };
      this.#contexts.set(key, context);
    }
    this.#arrivals += 1;
    Object.assign(context, { view, json, dataset: msg.dataset, dirty: true, seen: this.#arrivals });
    this.#evict();
    this.#schedule();
    return true;
  }

  /** Forgets every context and empties the container. */
  clear() {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#contexts.clear();
    this.#lastRender = -Infinity;
    this.#element.replaceChildren();
  }

  /** Drops the least recently updated contexts beyond MAX_CONTEXTS. */
  #evict() {
    while (this.#contexts.size > MAX_CONTEXTS) {
      let oldest = null;
      for (const [key, context] of this.#contexts) {
        if (oldest === null || context.seen < this.#contexts.get(oldest).seen) oldest = key;
      }
      this.#contexts.get(oldest).card?.remove();
      this.#contexts.delete(oldest);
    }
  }

  /** Renders now if the last render is old enough, else once when it is. */
  #schedule() {
    if (this.#timer !== null) return;
    const wait = this.#lastRender + MIN_INTERVAL_MS - performance.now();
    if (wait <= 0) {
      this.#render();
    } else {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#render();
      }, wait);
    }
  }

  #render() {
    this.#lastRender = performance.now();
    for (const context of this.#contexts.values()) {
      if (!context.dirty) continue;
      context.dirty = false;
      this.#draw(context, describe(context.dataset, this.#dictionary));
    }
  }

  #draw(context, sections) {
    if (!context.card) {
      context.card = element("article", "md-card");
      context.card.dataset.source = context.source;
      context.card.dataset.stream = context.stream;
      this.#element.prepend(context.card); // the newest context on top
    }
    const card = context.card;
    card.hidden = sections.length === 0;
    // The same sections with the same rows: only values changed, update them in place.
    const shape = (section) => section.rows.map((row) => `${row.key}=${row.label}`).join("\u0001");
    const signature = [context.view, ...sections.map((s) => `${s.id}:${shape(s)}`)].join("\u0002");
    if (signature === context.signature) {
      for (const section of sections) {
        for (const row of section.rows) {
          const dd = context.cells.get(row.key);
          if (dd && dd.textContent !== row.value) dd.textContent = row.value;
        }
      }
      return;
    }
    const open = card.querySelector("details.md-details")?.open ?? false;
    const cells = new Map();
    const [viewText, viewKind] = viewCaption(context.view);
    const caption = element("p", "md-caption");
    if (viewText) caption.append(element("span", `md-view md-view-${viewKind}`, viewText), " ");
    const source = own(SOURCES, context.source) ?? context.source;
    const origin = [context.stream || "room", source].filter(Boolean);
    caption.append(element("span", "md-origin", origin.join(" · ")));
    const children = [caption];
    for (const section of sections) {
      const rows = element("dl", "md-rows");
      rows.append(...section.rows.map((row) => rowElement(row, cells)));
      if (section.collapsed) {
        const details = element("details", "md-details");
        details.open = open;
        details.append(element("summary", "md-details-summary", section.title), rows);
        children.push(details);
      } else {
        const node = element("section", `md-section md-section-${section.id}`);
        node.append(element("h3", "md-section-title", section.title), rows);
        children.push(node);
      }
    }
    card.replaceChildren(...children);
    context.cells = cells;
    context.signature = signature;
  }
}
