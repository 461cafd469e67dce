// Shows <time class="published" datetime="unix seconds"> in the reader's own time zone.
for (const element of document.querySelectorAll("time.published")) {
  const when = new Date(Number(element.getAttribute("datetime")) * 1000);
  element.textContent = `published ${when.toLocaleString()}`;
  element.setAttribute("datetime", when.toISOString());
}
