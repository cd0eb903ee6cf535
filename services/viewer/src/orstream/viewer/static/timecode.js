// Reads the timecode burned into each frame (layout: orstream.common.timecode).
const ROWS = 2, COLS = 56, MAGIC = 0b1011;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export function readTimecode(video, canvas, ctx) {
  const width = video.videoWidth;
  const block = Math.max(4, Math.floor(width / 80));
  const w = COLS * block, h = ROWS * block;
  // Resizing a canvas reallocates (and clears) it: only when the picture's size changed.
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.drawImage(video, block, block, w, h, 0, 0, w, h);
  const pixels = ctx.getImageData(0, 0, w, h).data;
  const bits = [];
  for (let r = 0; r < ROWS; r++) {
    for (let c = 0; c < COLS; c++) {
      const x = c * block + (block >> 1), y = r * block + (block >> 1);
      const i = (y * w + x) * 4;
      const luma = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
      bits.push(luma > 128 ? 1 : 0);
    }
  }
  if (((bits[0] << 3) | (bits[1] << 2) | (bits[2] << 1) | bits[3]) !== MAGIC) return null;
  const bytes = new Uint8Array(13);
  for (let i = 0; i < 104; i++) bytes[i >> 3] |= bits[4 + i] << (7 - (i & 7));
  if ((crc32(bytes.subarray(0, 12)) & 0xff) !== bytes[12]) return null;
  const view = new DataView(bytes.buffer);
  const seq = view.getUint32(0);
  const captureNs = view.getBigUint64(4);
  return { seq, captureMs: Number(captureNs / 1000n) / 1000 };
}
