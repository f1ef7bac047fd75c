/**
 * The front end's view contract: every view kind is a pane application, made from its widget model and
 * the link store it shares with the other panes. `index.ts` (a view on its own) and the Dashboard make
 * panes only through `createPane`, so a new view is one file plus one line in `PANES`.
 */
import type { AnyModel } from "@anywidget/types";
import { AttentionApp } from "../app";
import type { LinkStore } from "../link";
import { AttributionApp } from "./attribution";
import { CrossAttentionApp } from "./cross-attention";
import { DecompositionApp } from "./decomposition";
import { FaithfulnessApp } from "./faithfulness";
import { FeatureApp } from "./features";
import { LensApp } from "./lens";
import { PatchingApp } from "./patching";

/** What every pane application is: a root element, a teardown, and an optional theme repaint. */
export interface PaneApp {
  readonly root: HTMLElement;
  destroy(): void;
  themeChanged?(): void;
}

// biome-ignore lint/suspicious/noExplicitAny: each pane reads its own state type from the model
export type PaneFactory = (model: AnyModel<any>, link: LinkStore) => PaneApp;

/** View kind (the Python view's `KIND`, synced as `_view`) → its pane application. */
export const PANES: Record<string, PaneFactory> = {
  attention: (model, link) => new AttentionApp(model, link),
  attribution: (model, link) => new AttributionApp(model, link),
  cross_attention: (model, link) => new CrossAttentionApp(model, link),
  decomposition: (model, link) => new DecompositionApp(model, link),
  features: (model, link) => new FeatureApp(model, link),
  faithfulness: (model, link) => new FaithfulnessApp(model, link),
  lens: (model, link) => new LensApp(model, link),
  patching: (model, link) => new PatchingApp(model, link),
};

/** Makes the pane of a view kind. */
// biome-ignore lint/suspicious/noExplicitAny: see PaneFactory
export function createPane(kind: string, model: AnyModel<any>, link: LinkStore): PaneApp {
  const factory = PANES[kind];
  if (!factory) throw new Error(`mmviz: no front-end view for kind ${JSON.stringify(kind)}`);
  return factory(model, link);
}
