/**
 * Pure maths of the CrossAttentionView: word maps per resolution group, summed over steps and
 * groups after a bilinear upsample to a common size (mirrors `CrossAttentionTrace.heatmap`, with
 * bilinear instead of bicubic for speed; the layers of one resolution are summed in Python).
 */
import { decodeTensor, type TensorPayload } from "../codecs";

/** One resolution: `[steps, words, h, w]` word maps summed over its layers. */
export interface MapGroup {
  key: string;
  h: number;
  w: number;
  steps: number;
  words: number;
  layers: string[];
  /** `[steps, words, h, w]`. */
  data: Float32Array;
  /** `[words, h, w]`: the sum over steps (DAAM's map). */
  total: Float32Array;
}

export interface GroupPayload {
  key: string;
  resolution: [number, number];
  layers: string[];
  maps: TensorPayload;
}

/** Decodes one group and precomputes its sum over steps. */
export function decodeGroup(payload: GroupPayload): MapGroup {
  const t = decodeTensor(payload.maps);
  const [steps = 0, words = 0, h = 1, w = 1] = t.shape;
  const plane = words * h * w;
  const total = new Float32Array(plane);
  for (let s = 0; s < steps; s++) {
    const base = s * plane;
    for (let i = 0; i < plane; i++) total[i] = (total[i] ?? 0) + (t.data[base + i] ?? 0);
  }
  return { key: payload.key, h, w, steps, words, layers: payload.layers, data: t.data, total };
}

/** The `[h, w]` map of one word at one step (`step < 0`: summed over steps). */
export function groupSlice(group: MapGroup, word: number, step: number): Float32Array {
  const hw = group.h * group.w;
  if (step < 0) return group.total.subarray(word * hw, (word + 1) * hw);
  const start = (step * group.words + word) * hw;
  return group.data.subarray(start, start + hw);
}

/**
 * Adds a bilinear (half-pixel centres, edges clamped) upsample of `src [h, w]` to `out [H, W]`.
 */
export function addBilinear(
  src: Float32Array,
  h: number,
  w: number,
  out: Float32Array,
  H: number,
  W: number,
): void {
  const sy = h / H;
  const sx = w / W;
  for (let y = 0; y < H; y++) {
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), h - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, h - 1);
    const ty = fy - y0;
    for (let x = 0; x < W; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), w - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, w - 1);
      const tx = fx - x0;
      const a = (src[y0 * w + x0] ?? 0) * (1 - tx) + (src[y0 * w + x1] ?? 0) * tx;
      const b = (src[y1 * w + x0] ?? 0) * (1 - tx) + (src[y1 * w + x1] ?? 0) * tx;
      out[y * W + x] = (out[y * W + x] ?? 0) + a * (1 - ty) + b * ty;
    }
  }
}

/** A word's map at `[H, W]`: each switched-on group upsampled and summed. */
export function wordMap(
  groups: readonly MapGroup[],
  active: ReadonlySet<string>,
  word: number,
  step: number,
  H: number,
  W: number,
): Float32Array {
  const out = new Float32Array(H * W);
  for (const g of groups) {
    if (!active.has(g.key) || word < 0 || word >= g.words) continue;
    addBilinear(groupSlice(g, word, step), g.h, g.w, out, H, W);
  }
  for (let i = 0; i < out.length; i++) if ((out[i] ?? 0) < 0) out[i] = 0;
  return out;
}

/** `[min, max]` of an array (0, 0 when empty). */
export function range(values: Float32Array): [number, number] {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] ?? 0;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return values.length ? [lo, hi] : [0, 0];
}

/**
 * RGBA pixels of a heat map, min-max normalised (like DAAM's display): colour from `table`, alpha
 * `opacity · (0.25 + 0.75 · v)` so the image shows through where the word is not attended.
 */
export function heatRGBA(values: Float32Array, table: Uint8ClampedArray, opacity: number): Uint8ClampedArray {
  const [lo, hi] = range(values);
  const span = hi - lo;
  const out = new Uint8ClampedArray(values.length * 4);
  for (let i = 0; i < values.length; i++) {
    const v = span > 0 ? ((values[i] ?? 0) - lo) / span : 0;
    const idx = Math.min(255, Math.max(0, Math.round(v * 255)));
    out[i * 4] = table[idx * 3] ?? 0;
    out[i * 4 + 1] = table[idx * 3 + 1] ?? 0;
    out[i * 4 + 2] = table[idx * 3 + 2] ?? 0;
    out[i * 4 + 3] = Math.round(255 * opacity * (0.25 + 0.75 * v));
  }
  return out;
}
