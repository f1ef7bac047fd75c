/**
 * The link store: what the user points at, shared by every pane of a Dashboard (and owned by a view shown
 * on its own). A pane writes what its pointer is over and subscribes to repaint what other panes point at;
 * no pane knows another's DOM. Positions are positions of the shared input (a Dashboard checks its panes
 * show the same input); an image patch is named by (image, row, col), so panes whose positions differ (a
 * vision tower and a language model) still meet on the patch.
 */
import { Store } from "./store";

/** An image patch: image index, patch row and column. */
export interface Patch {
  image: number;
  row: number;
  col: number;
}

export interface LinkState {
  /** Token position pointed at (-1: none). */
  position: number;
  /** Image patch pointed at (null: none). */
  patch: Patch | null;
  /** Denoising step pointed at (-1: none; the cross-attention scrubber). */
  timestep: number;
  /** Model layer pointed at (-1: none). */
  layer: number;
  /** Attention head pointed at (-1: none). */
  head: number;
  /**
   * The stack `layer` and `head` belong to ("": the writer does not know; panes apply it to the stack they
   * show). Every write of `layer` sets it too.
   */
  module: string;
  /** Which pane wrote the pointer fields last, so a pane can ignore its own writes. */
  source: string;
}

export type LinkStore = Store<LinkState>;

export function createLink(): LinkStore {
  return new Store<LinkState>({
    position: -1,
    patch: null,
    timestep: -1,
    layer: -1,
    head: -1,
    module: "",
    source: "",
  });
}

let counter = 0;

/** A fresh id for a pane's writes (`link.set({..., source: id})`). */
export function paneId(kind: string): string {
  counter += 1;
  return `${kind}-${counter}`;
}

/** The positions of a token table's image patches, keyed "image,row,col". */
export interface PatchIndex {
  byPatch: Map<string, number>;
  patchOf: (position: number) => Patch | null;
}

export function patchKey(p: Patch): string {
  return `${p.image},${p.row},${p.col}`;
}

/** Indexes a table's image positions both ways (position ↔ patch). */
export function indexPatches(
  kind: readonly string[],
  imageIndex: ArrayLike<number>,
  patchRow: ArrayLike<number>,
  patchCol: ArrayLike<number>,
): PatchIndex {
  const byPatch = new Map<string, number>();
  for (let p = 0; p < kind.length; p++) {
    if (kind[p] !== "image") continue;
    const key = patchKey({ image: imageIndex[p] ?? 0, row: patchRow[p] ?? 0, col: patchCol[p] ?? 0 });
    if (!byPatch.has(key)) byPatch.set(key, p);
  }
  return {
    byPatch,
    patchOf: (position) =>
      position >= 0 && kind[position] === "image"
        ? { image: imageIndex[position] ?? 0, row: patchRow[position] ?? 0, col: patchCol[position] ?? 0 }
        : null,
  };
}

/**
 * The position of this pane's table that the link points at: the patch when one is pointed at (looked up
 * by image, row and col), else the position itself when the table has it; -1 otherwise.
 */
export function linkedPosition(state: LinkState, index: PatchIndex, length: number): number {
  if (state.patch) return index.byPatch.get(patchKey(state.patch)) ?? -1;
  return state.position >= 0 && state.position < length ? state.position : -1;
}
