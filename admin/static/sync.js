// The sync page: while its job runs, polls /admin/jobs/{id} every second,
// shows the progress, and reloads the page when the job has ended.
(function () {
  var job = document.getElementById("job");
  if (!job || job.dataset.state !== "running") return;
  var url = "/admin/jobs/" + encodeURIComponent(job.dataset.id);
  function poll() {
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (state) {
        if (!state) return;
        if (state.state !== "running") { window.location.reload(); return; }
        if (state.progress) {
          document.getElementById("progress").textContent =
            state.progress.phase + ": " + state.progress.done;
        }
        setTimeout(poll, 1000);
      });
  }
  setTimeout(poll, 1000);
})();
