/**
 * The synced state of an AttentionView, mirroring `mmviz/widgets/attention_view.py` (trait names stay
 * snake_case on both sides). Traits starting with `_` are written by Python only.
 */
import type { TensorPayload } from "./codecs";

export type Aggregate = "head" | "mean" | "max" | "rollout";
export type Direction = "from" | "to";
export type Side = "query" | "key";

/** One token table (one batch item): columns as the data model's `TokenTable`. */
export interface TableState {
  /** `[positions]` display text (data, never markup). */
  text: string[];
  /** `[positions]` "text" | "image" | "special" | "pad". */
  kind: string[];
  /** `[positions]` uint8, 1 for tokens produced by `generate` (absent in older states). */
  generated?: TensorPayload;
  /** `[positions]` int32 word id. */
  word_id: TensorPayload;
  /** `[positions]` int32 image index, -1 for non-image tokens. */
  image_index: TensorPayload;
  /** `[positions]` int32 patch row, -1 for non-image tokens. */
  patch_row: TensorPayload;
  /** `[positions]` int32 patch column, -1 for non-image tokens. */
  patch_col: TensorPayload;
  /** uint8 `[height, width, 3]` images. */
  images: TensorPayload[];
  /** `(rows, cols)` patch grid of each image. */
  grids: [number, number][];
}

/** One captured attention module. */
export interface ModuleState {
  name: string;
  /** Model layer index of each shown layer. */
  layers: number[];
  /** Model head index of each shown head. */
  heads: number[];
  query_table: string;
  key_table: string;
  n_query: number;
  n_key: number;
  /** Query rows (and key columns) averaged into one matrix cell; 1 = full resolution. */
  q_step: number;
  k_step: number;
  self_attention: boolean;
}

/** Per-head block-mean thumbnails of one module. */
export interface ThumbState {
  /** uint8 `[layers, heads, rows, cols]`, quantised per (layer, head). */
  heads: TensorPayload;
  /** uint8 `[layers, rows, cols]`: head mean. */
  mean: TensorPayload;
  /** uint8 `[layers, rows, cols]`: head max. */
  max: TensorPayload;
}

export interface AttentionViewState {
  /** Selected module name. @default the language model, else the first module */
  module: string;
  /** Selected model layer index. */
  layer: number;
  /** Selected model head index (used when `aggregate` is "head"). */
  head: number;
  /** "head", or a reduction over heads: "mean", "max", "rollout". @default "head" */
  aggregate: Aggregate;
  /** Pinned query position, -1 for none. @default -1 */
  token: number;
  /** Colour tokens by the attention they pay ("from") or receive ("to"). @default "from" */
  direction: Direction;
  /** Hide special and padding tokens, renormalising rows. @default false */
  hide_special: boolean;
  /** Merge subword tokens into words. @default false */
  merge_words: boolean;
  /** Colormap name. @default "viridis" */
  cmap: string;
  batch_index: number;
  _title: string;
  _modules: ModuleState[];
  _tables: Record<string, TableState>;
  _thumbs: Record<string, ThumbState>;
  /** Attention maps shipped with the state, by `sliceKey`; others are fetched on demand. */
  _slices: Record<string, TensorPayload>;
  /** Notes shown above the view (downsampling, what an export left out). */
  _notes: string[];
  /** True in an exported page: there is no kernel to fetch slices from. */
  _standalone: boolean;
}

/** The key of one attention map: `module|layer|head` with head a number or a reduction name. */
export function sliceKey(module: string, layer: number, aggregate: Aggregate, head: number): string {
  return `${module}|${layer}|${aggregate === "head" ? String(head) : aggregate}`;
}
