/**
 * Token tables as the browser holds them, decoded once from the one wire format every view receives
 * (`mmviz/widgets/_state.py: table_state`): text and kind as JSON, integer columns and images binary.
 */
import { decodeInts, decodeTensor, type Tensor } from "./codecs";
import { indexPatches, type PatchIndex } from "./link";
import type { TableState } from "./model";
import type { Table } from "./render/matrix";

export function decodeTable(raw: TableState): Table {
  return {
    text: raw.text,
    kind: raw.kind,
    generated: raw.generated
      ? Uint8Array.from(decodeTensor(raw.generated).data, (v) => (v > 0 ? 1 : 0))
      : new Uint8Array(raw.text.length),
    wordId: decodeInts(raw.word_id),
    imageIndex: decodeInts(raw.image_index),
    patchRow: decodeInts(raw.patch_row),
    patchCol: decodeInts(raw.patch_col),
    grids: raw.grids,
  };
}

/** Position of every cell of image `image`'s patch grid, row-major (-1: no token there). */
export function gridPositions(table: Table, image: number): Int32Array {
  const [rows, cols] = table.grids[image] ?? [1, 1];
  const positions = new Int32Array(rows * cols).fill(-1);
  for (let p = 0; p < table.kind.length; p++) {
    if (table.kind[p] === "image" && table.imageIndex[p] === image) {
      positions[(table.patchRow[p] ?? 0) * cols + (table.patchCol[p] ?? 0)] = p;
    }
  }
  return positions;
}

/** The table's patches indexed both ways, for the link store. */
export function tablePatches(table: Table): PatchIndex {
  return indexPatches(table.kind, table.imageIndex, table.patchRow, table.patchCol);
}

/** The images of a table state, decoded. */
export function tableImages(raw: TableState): Tensor[] {
  return raw.images.map(decodeTensor);
}
