/** esbuild's `text` loader turns a CSS import into its source text (standalone bundle only). */
declare module "*.css" {
  const text: string;
  export default text;
}
