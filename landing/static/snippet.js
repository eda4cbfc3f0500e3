/* leadkiln tracking snippet: page views (and leadkiln.track() calls) from the company's own site.
   <script async src="https://LEADKILN/api/snippet.js" data-key="lkb_..."></script>
   Keeps a first-party visitor id in the `lk_site` cookie; a letter's link adds `lk=<token>`,
   which tells leadkiln who the visitor is. Sends with sendBeacon as text/plain: no preflight,
   no cookies of leadkiln's own. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var key = script.getAttribute("data-key");
  var endpoint = new URL("/api/events", script.src).href;
  if (!key) return;

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([A-Za-z0-9_-]{16,64})"));
    return match ? match[1] : null;
  }
  function newId() {
    var bytes = new Uint8Array(18);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode.apply(null, bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  var visitor = cookie("lk_site");
  if (!visitor) {
    visitor = newId();
  }
  var secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = "lk_site=" + visitor + "; Max-Age=31536000; Path=/; SameSite=Lax" + secure;

  var params = new URLSearchParams(location.search);
  var leadToken = params.get("lk");

  function send(type, properties) {
    var body = {
      key: key, type: type, visitor_id: visitor, url: location.href.slice(0, 2000),
      referrer: document.referrer.slice(0, 2000), title: document.title.slice(0, 300), properties: properties || {}
    };
    if (leadToken) { body.lead_token = leadToken; leadToken = null; }
    var payload = new Blob([JSON.stringify(body)], { type: "text/plain" });
    if (!(navigator.sendBeacon && navigator.sendBeacon(endpoint, payload))) {
      fetch(endpoint, { method: "POST", body: payload, keepalive: true, mode: "no-cors", credentials: "omit" });
    }
  }
  window.leadkiln = { track: send, visitorId: visitor };
  send("page_view");
})();
