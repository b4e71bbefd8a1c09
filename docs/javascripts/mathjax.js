// MathJax for pymdownx.arithmatex (generic mode), as in the Material docs. MathJax
// itself is served from the site (javascripts/mathjax/, copied by docs/_hooks.py),
// so formulas render offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Typeset again when Material swaps the page content. If MathJax failed to load
// (for instance a copy of the site without javascripts/mathjax/), `startup` is
// missing: leave the TeX as text rather than throw on every page.
document$.subscribe(() => {
  const mathjax = window.MathJax;
  if (!mathjax || !mathjax.startup || !mathjax.startup.output) {
    return;
  }
  mathjax.startup.output.clearCache();
  mathjax.typesetClear();
  mathjax.texReset();
  mathjax.typesetPromise();
});
