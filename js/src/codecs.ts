/**
 * Decoders for the binary tensor payloads written by `mmviz/_codec.py`.
 *
 * A payload is `{dtype, shape, data, axes, scale, offset}`; `data` arrives as a `DataView` (in
 * Jupyter, from a binary websocket frame; in an exported page, from base64). Values decode as
 * `offset + scale * stored`, with one scale/offset per slice of the `axes` leading axes.
 */

export type WireDtype = "uint8" | "float16" | "float32" | "int32";

/** One tensor as it arrives from Python. */
export interface TensorPayload {
  dtype: WireDtype;
  shape: number[];
  data: DataView;
  axes: number;
  scale: number | DataView;
  offset: number | DataView;
}

/** A decoded tensor: float32 values (int32 for int payloads) in row-major order. */
export interface Tensor {
  shape: number[];
  data: Float32Array;
}

let halfTable: Float32Array | null = null;

/** Float32 value of every float16 bit pattern (256 KB, built once). */
function half(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * 2 ** -14 * (frac / 1024);
    else if (exp === 31) table[h] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else table[h] = sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  halfTable = table;
  return table;
}

/** Converts one float16 bit pattern to a number. */
export function halfToFloat(bits: number): number {
  return half()[bits & 0xffff] ?? 0;
}

function asDataView(value: unknown): DataView {
  if (value instanceof DataView) return value;
  if (value instanceof ArrayBuffer) return new DataView(value);
  if (ArrayBuffer.isView(value)) return new DataView(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError("mmviz: expected binary data in a tensor payload");
}

function float32s(value: number | DataView, count: number): Float32Array {
  if (typeof value === "number") return new Float32Array(count).fill(value);
  const view = asDataView(value);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** Number of elements of a shape. */
export function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Decodes a payload to float32 values. Honours the `DataView`'s byteOffset (the view may sit in a
 * larger buffer) and reads little-endian regardless of the platform.
 */
export function decodeTensor(payload: TensorPayload): Tensor {
  const shape = payload.shape.map(Number);
  const n = size(shape);
  const view = asDataView(payload.data);
  const out = new Float32Array(n);
  switch (payload.dtype) {
    case "uint8": {
      const bytes = new Uint8Array(view.buffer, view.byteOffset, n);
      for (let i = 0; i < n; i++) out[i] = bytes[i] ?? 0;
      break;
    }
    case "float16": {
      const table = half();
      for (let i = 0; i < n; i++) out[i] = table[view.getUint16(i * 2, true)] ?? 0;
      break;
    }
    case "float32":
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
      break;
    case "int32":
      for (let i = 0; i < n; i++) out[i] = view.getInt32(i * 4, true);
      return { shape, data: out };
    default:
      throw new TypeError(`mmviz: unknown tensor dtype ${String(payload.dtype)}`);
  }
  const axes = Number(payload.axes ?? 0);
  const slices = size(shape.slice(0, axes));
  const per = slices === 0 ? 0 : n / slices;
  const scale = float32s(payload.scale, slices);
  const offset = float32s(payload.offset, slices);
  for (let s = 0; s < slices; s++) {
    const a = scale[s] ?? 1;
    const b = offset[s] ?? 0;
    if (a === 1 && b === 0) continue;
    const end = (s + 1) * per;
    for (let i = s * per; i < end; i++) out[i] = b + a * (out[i] ?? 0);
  }
  return { shape, data: out };
}

/** Decodes an int payload to a plain Int32Array. */
export function decodeInts(payload: TensorPayload): Int32Array {
  return Int32Array.from(decodeTensor(payload).data);
}

/** Decodes a base64 string to a DataView (exported pages carry binary leaves this way). */
export function base64ToDataView(text: string): DataView {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new DataView(bytes.buffer);
}

/**
 * Replaces every `{"__b64__": "..."}` leaf of a JSON value by a DataView (the export's encoding of
 * binary leaves; see `mmviz/export/html.py`).
 */
export function reviveBinary(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reviveBinary);
  if (value && typeof value === "object") {
    const record = value as Record<string, unknown>;
    const b64 = record.__b64__;
    if (typeof b64 === "string" && Object.keys(record).length === 1) return base64ToDataView(b64);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(record)) out[k] = reviveBinary(v);
    return out;
  }
  return value;
}
