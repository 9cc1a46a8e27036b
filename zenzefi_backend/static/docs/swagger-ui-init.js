// Starts Swagger UI on /docs. A file of its own rather than an inline script, so a Content-Security-Policy
// without 'unsafe-inline' can cover the page. OPENAPI_SWAGGER_UI_CONFIG arrives as JSON in data-config.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  var config = {
    url: root.dataset.specUrl,
    domNode: root,
    // The online validator badge would send the spec to validator.swagger.io; the docs stay on this host.
    validatorUrl: null
  };
  Object.assign(config, JSON.parse(root.dataset.config || "{}"));
  window.ui = SwaggerUIBundle(config);
})();
